"""Channel-following targets and revocation, the parts without services:
which targets a build's success publishes, which a channel's move does, how
a revoked image is retired, the publication ids of channel moves, and the
automatic publisher's choice (a faked core: no NATS, no builder)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from kiln_common.builds import Build, BuildState
from kiln_common.errors import InvalidArgument
from kiln_common.events import from_json, make_event, to_json
from kiln_common.ids import new_id
from kiln_common.publications import Publication
from kiln_publisher import autopublish, consumers, facts
from kiln_publisher.model import channel_publication_id, record_key
from kiln_publisher.targets import Request, following, on_success, revoke_how
from kiln_recipe.schema import Publish

PUBLISH = Publish.model_validate(
    {
        "glance": [
            {"cloud": "nectar"},
            {"cloud": "nectar", "name": "web-stable", "channel": "stable", "keep": 1},
            {"cloud": "other", "name": "web-beta", "channel": "beta"},
        ],
        "marketplace": {"endorser": "ops@example.org"},
    }
)


def test_a_builds_success_publishes_all_but_the_channel_following_targets() -> None:
    chosen = on_success(PUBLISH)
    assert [(t.cloud, t.channel) for t in chosen.glance] == [("nectar", None)]
    assert chosen.marketplace is not None


def test_a_channels_move_publishes_only_the_glance_targets_following_it() -> None:
    chosen = following(PUBLISH, "stable")
    assert [t.name for t in chosen.glance] == ["web-stable"]
    assert chosen.marketplace is None
    assert not following(PUBLISH, "candidate").targets


@pytest.mark.parametrize(
    ("retire", "how"), [("hide", "hide"), ("deactivate", "deactivate"), ("delete", "deactivate")]
)
def test_a_revoked_image_is_hidden_or_deactivated_never_deleted(retire: str, how: str) -> None:
    assert revoke_how(retire) == how


def test_channel_publication_ids_are_kv_keys_and_checked() -> None:
    build = new_id()
    pub = channel_publication_id(build, "stable-2")
    assert pub == f"chan-{build}-stable-2" and record_key(pub) == pub
    assert record_key(f"auto-{build}") == f"auto-{build}" and record_key(build) == build
    for bad in (f"chan-{build}", f"chan-{build}-", f"chan-{build}-Stable", f"chan-{build}-a.b",
                "chan-nope-stable", f"chan-{build}-stable/x", f"auto-{build}-x"):  # fmt: skip
        with pytest.raises(InvalidArgument):
            record_key(bad)
    with pytest.raises(InvalidArgument):
        channel_publication_id(build, "../x")


@dataclass
class FakeCore:
    """What autopublish.handle asks of the core."""

    publish_section: Publish
    published: list[Publish] = field(default_factory=list)

    async def build(self, build_id: str) -> Build:
        return Build(id=build_id, state=BuildState.SUCCEEDED, tenant="t")

    async def recipe_of(self, build_id: str) -> facts.RecipeFacts:
        return facts.RecipeFacts(publish=self.publish_section)

    async def publish(self, request: Request, publication_id: str, tenant: str) -> Publication:
        self.published.append(request.publish)
        return Publication(id=publication_id)

    async def settle_revoked(self, build_id: str) -> None:
        return None


async def test_automatic_publishing_leaves_channel_targets_to_their_channel() -> None:
    core = FakeCore(PUBLISH)
    assert await autopublish.handle(core, new_id()) == "pending"  # type: ignore[arg-type]
    (asked,) = core.published
    assert [t.channel for t in asked.glance] == [None] and asked.marketplace is not None


async def test_a_recipe_with_only_channel_targets_is_skipped_on_success() -> None:
    only = Publish.model_validate(
        {"glance": [{"cloud": "nectar", "name": "web-stable", "channel": "stable"}]}
    )
    core = FakeCore(only)
    assert await autopublish.handle(core, new_id()) == "skipped"  # type: ignore[arg-type]
    assert core.published == []


def test_a_channel_moved_events_data_is_read_from_its_envelope() -> None:
    build = new_id()
    data = {"name": "web", "channel": "stable", "version": "1.2-7", "previous": "", "tenant": "t"}
    raw = to_json(make_event("channel.moved", build, data, "kiln-builder"))
    assert from_json(raw).subject == build and consumers.data_of(raw) == data
