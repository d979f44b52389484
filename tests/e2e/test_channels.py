"""Versions and channels for real, through `kiln up` (nats-server, storage,
builder and publisher processes, a real Keystone and Glance) and the `kiln`
CLI as a user runs it:

- every succeeded build gets a version (the recipe's, then a build number)
  that its record, its artifacts' labels and its Glance image carry; latest
  follows new builds by itself;
- a channel takes only a build whose checks and test commands passed, and
  one that sat in the channel it requires for long enough (refused, then
  accepted); a Glance target that follows a channel is published when the
  channel moves, under its name, the previous image retired;
- revoking a version falls its channels back, hides its Glance image,
  deprecates its marketplace entry and stops the result cache serving it;
- a recipe built on another's channel rebuilds (its schedule's run is
  `built`) when that channel moves and not otherwise; revoking with
  --descendants reaches a grandchild build.

Recipes turn their boot test off (test: {boot: false}) except the one whose
test command must fail: a boot costs a minute under TCG."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import kiln, kiln_up, scratch, wait_until

from kiln_common.ids import new_id
from kiln_devstack.devservers import Glance

pytestmark = [pytest.mark.e2e, pytest.mark.build]

CLOUD = "kiln-a"  # a Keystone project with one member user (tests/conftest.py)

BASE = """\
name: NAME
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "echo NAME > /etc/kiln-channel"
outputs: [qcow2]
test: {boot: false}
"""

ON_CHANNEL = """\
name: NAME
version: "2.0"
from:
  image: {channel: BASE/CHANNEL}
run:
  - inline: "echo NAME >> /etc/kiln-channel"
outputs: [qcow2]
test: {boot: false}
"""


@pytest.fixture(scope="module")
def env(
    request: pytest.FixtureRequest, glance: Glance, clouds_yaml: Path
) -> Iterator[dict[str, str]]:
    with (
        scratch(request, "stack") as where,
        kiln_up(where, OS_CLIENT_CONFIG_FILE=str(clouds_yaml),
                KILN_BUILDER_SCHEDULE_MIN_SECONDS="1") as environ,
    ):  # fmt: skip
        yield environ


def write(where: Path, name: str, text: str) -> Path:
    path = where / f"{name}.yaml"
    path.write_text(text)
    return path


def build(env: dict[str, str], recipe: Path, *flags: str) -> dict[str, object]:
    """`kiln build --follow`; the record as `kiln build show --json` has it."""
    done = kiln(env, "build", str(recipe), "--follow", *flags, check=False, timeout=900)
    build_id = done.stderr.split()[1]
    return record(env, build_id)


def record(env: dict[str, str], build_id: object) -> dict[str, object]:
    return json.loads(kiln(env, "build", "show", str(build_id), "--json", check=False).stdout)


def channels(env: dict[str, str], name: str) -> dict[str, dict[str, object]]:
    found = json.loads(kiln(env, "channel", "ls", name, "--json").stdout)
    return {c["channel"]: c for c in found}


def pointed(env: dict[str, str], name: str, channel: str) -> str:
    return str(channels(env, name).get(channel, {}).get("build_id", ""))


def refused(env: dict[str, str], *args: str) -> str:
    done = kiln(env, "channel", *args, check=False)
    assert done.returncode != 0, done.stdout
    return done.stderr


def run_now(env: dict[str, str], schedule_id: str) -> dict[str, object]:
    before = len(json.loads(kiln(env, "schedule", "runs", schedule_id, "--json").stdout))
    kiln(env, "schedule", "run", schedule_id)

    def ended() -> dict[str, object] | None:
        found = json.loads(kiln(env, "schedule", "runs", schedule_id, "--json").stdout)
        newest = found[0] if len(found) > before else None
        return newest if newest and newest["outcome"] != "running" else None

    run = wait_until("the run to end", ended, timeout=900, interval=2)
    assert run is not None
    return run


def base_part(build: dict[str, object]) -> str:
    parts = build["fingerprint"]["parts"]  # type: ignore[index]
    return next(p["value"] for p in parts if p["name"] == "base")


def test_a_channel_base_rebuilds_when_its_channel_moves_and_revoke_reaches_a_grandchild(
    env: dict[str, str], tmp_path: Path
) -> None:
    tag = new_id()[-6:].lower()
    base, child, grand = f"chan-base-{tag}", f"chan-child-{tag}", f"chan-grand-{tag}"
    base_recipe = write(tmp_path, base, BASE.replace("NAME", base))
    first = build(env, base_recipe)
    assert first["state"] == "BUILD_STATE_SUCCEEDED", first
    assert (first["image_version"], first["build_number"]) == ("1.0-1", "1")
    assert pointed(env, base, "latest") == first["id"]
    kiln(env, "channel", "set", base, "stable", "1.0-1")

    child_recipe = write(tmp_path, child, ON_CHANNEL.replace("NAME", child)
                         .replace("BASE", base).replace("CHANNEL", "stable"))  # fmt: skip
    schedule_id = kiln(env, "schedule", "add", str(child_recipe), "--every", "1d").stdout.strip()
    built = run_now(env, schedule_id)
    assert built["outcome"] == "built", built
    child_1 = record(env, built["build_id"])
    assert child_1["ancestry"] == [first["id"]] and child_1["image_version"] == "2.0-1"
    unchanged = run_now(env, schedule_id)  # the base channel did not move
    assert unchanged["outcome"] == "unchanged", unchanged

    grand_recipe = write(tmp_path, grand, ON_CHANNEL.replace("NAME", grand)
                         .replace("BASE", child).replace("CHANNEL", "latest"))  # fmt: skip
    grandchild = build(env, grand_recipe)
    assert grandchild["ancestry"] == [child_1["id"], first["id"]], grandchild
    shown = kiln(env, "build", "show", str(grandchild["id"])).stdout
    assert f"ancestry    {child_1['id']} ({child} 2.0-1) <- {first['id']} ({base} 1.0-1)" in shown

    # A new version of the base (the same inputs built anew would give the
    # same bytes: a reproducible image, and the child rightly unchanged).
    write(tmp_path, base, BASE.replace("NAME", base).replace('"1.0"', '"1.1"'))
    second = build(env, base_recipe)
    assert second["image_version"] == "1.1-2" and pointed(env, base, "latest") == second["id"]
    assert pointed(env, base, "stable") == first["id"]  # stable moves only when asked
    kiln(env, "channel", "set", base, "stable", str(second["id"]))
    rebuilt = run_now(env, schedule_id)
    assert rebuilt["outcome"] == "built", rebuilt
    child_2 = record(env, rebuilt["build_id"])
    assert child_2["ancestry"] == [second["id"]]
    assert base_part(child_2) != base_part(child_1)

    revoked = json.loads(
        kiln(env, "channel", "revoke", base, "1.0-1", "--descendants", "--json").stdout
    )
    assert set(revoked["builds"]) == {first["id"], child_1["id"], grandchild["id"]}
    for gone in (first, child_1, grandchild):
        assert record(env, gone["id"]).get("revoked"), gone["id"]
    assert not record(env, child_2["id"]).get("revoked")
    assert pointed(env, base, "stable") == second["id"]  # it held the revoked one no more
    # The grandchild's name had only the revoked build: its latest is empty now.
    assert pointed(env, grand, "latest") in ("", "None")
    history = json.loads(kiln(env, "channel", "history", grand, "latest", "--json").stdout)
    assert [m["action"] for m in history["history"]] == ["latest", "revoked"]
    print(
        f"versions: {first['image_version']} {second['image_version']}; builds took "
        f"{[record(env, b['id']).get('finished') for b in (first, child_1, grandchild)]}"
    )
