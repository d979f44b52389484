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
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import glance_images, kiln, kiln_up, schedule_run_now, scratch, wait_until

from kiln_client import PublisherClient
from kiln_common.ids import new_id
from kiln_devstack.devservers import Glance
from kiln_devstack.stack import Stack

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

FAILING = """\
name: NAME
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [qcow2]
test: {commands: ["false"]}
"""

PUBLISHED = """\
name: NAME
version: "VERSION"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "echo NAME VERSION > /etc/kiln-channel"
outputs: [qcow2]
test: {boot: false}
publish:
  glance: [{cloud: CLOUD, name: NAME-stable, channel: stable, keep: 1, retire: hide}]
  marketplace: true
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


def images_named(clouds_yaml: Path, name: str) -> dict[str, dict[str, object]]:
    """Glance's images of the name (hidden ones too), by the build that made them."""
    return {str(i.get("kiln_build_id")): i for i in glance_images(clouds_yaml, name, cloud=CLOUD)}


def entry_of(env: dict[str, str], build_id: object) -> str:
    """The marketplace entry the build's automatic publication made."""
    stack = Stack.load(Path(env["KILN_HOME"]))
    assert stack is not None

    def entry() -> str | None:
        with PublisherClient(stack.publisher) as client:
            try:
                pub = client.publication(f"auto-{build_id}")
            except Exception:  # noqa: BLE001 - not recorded yet
                return None
        return next((r.entry_identifier for r in pub.results if r.entry_identifier), None)

    found = wait_until("the build's marketplace entry", entry, timeout=120, interval=1)
    assert found is not None
    return found


def promote(env: dict[str, str], name: str, version: str, wait: float) -> None:
    """candidate, then stable once the required time in candidate has passed."""
    kiln(env, "channel", "set", name, "candidate", version)
    early = refused(env, "set", name, "stable", version)
    assert "stable requires a build to sit in candidate for 3s first" in early, early
    time.sleep(wait)
    kiln(env, "channel", "set", name, "stable", version)


def test_channels_take_tested_builds_after_their_wait_publish_their_follower_and_revoke(
    env: dict[str, str], clouds_yaml: Path, tmp_path: Path
) -> None:
    tag = new_id()[-6:].lower()
    bad, web = f"chan-bad-{tag}", f"chan-web-{tag}"
    failed = build(env, write(tmp_path, bad, FAILING.replace("NAME", bad)))
    assert failed["state"] == "BUILD_STATE_FAILED", failed
    why = refused(env, "set", bad, "candidate", str(failed["id"]))
    assert f"build {failed['id']}'s test command `false` exited 1" in why, why

    recipe = tmp_path / f"{web}.yaml"

    def web_build(version: str) -> dict[str, object]:
        recipe.write_text(PUBLISHED.replace("NAME", web).replace("VERSION", version)
                          .replace("CLOUD", CLOUD))  # fmt: skip
        made = build(env, recipe)
        assert made["state"] == "BUILD_STATE_SUCCEEDED", made
        return made

    first = web_build("1.0")
    assert first["image_version"] == "1.0-1"
    first_entry = entry_of(env, first["id"])  # published on success; stable follows its channel
    assert not images_named(clouds_yaml, f"{web}-stable")
    kiln(env, "channel", "policy", web, "stable", "--requires", "candidate", "--for", "3s")
    never = refused(env, "set", web, "stable", "1.0-1")
    assert f"build {first['id']} was never there" in never, never
    promote(env, web, "1.0-1", 3.5)

    def shown(build_id: object) -> dict[str, object] | None:
        image = images_named(clouds_yaml, f"{web}-stable").get(str(build_id))
        return image if image is not None and not image.get("os_hidden") else None

    image_1 = wait_until("stable's image in Glance", lambda: shown(first["id"]), 180, 1)
    assert image_1 is not None and image_1["kiln_version"] == "1.0-1"

    second = web_build("1.1")
    assert second["image_version"] == "1.1-2"
    second_entry = entry_of(env, second["id"])
    promote(env, web, "1.1-2", 3.5)
    wait_until("stable's new image in Glance", lambda: shown(second["id"]), 180, 1)
    wait_until("the old one hidden", lambda: not shown(first["id"]), 60, 1)
    history = json.loads(kiln(env, "channel", "history", web, "stable", "--json").stdout)
    assert [m["version"] for m in history["history"]] == ["1.0-1", "1.1-2"]

    done = kiln(env, "channel", "revoke", web, "1.1-2", "--reason", "CVE-2026-0001").stdout
    assert f"revoked 1 build(s): {second['id']}" in done, done
    assert {c: str(v.get("build_id")) for c, v in channels(env, web).items()} == {
        "latest": first["id"],
        "candidate": first["id"],
        "stable": first["id"],
    }
    wait_until("the revoked image hidden", lambda: not shown(second["id"]), 120, 1)
    wait_until("stable's image shown again", lambda: shown(first["id"]), 180, 1)
    status = lambda: kiln(env, "market", "show", second_entry).stdout  # noqa: E731
    wait_until("the revoked entry deprecated", lambda: "deprecated" in status(), 120, 1)
    assert "status       valid" in kiln(env, "market", "show", first_entry).stdout
    shown_record = kiln(env, "build", "show", str(second["id"])).stdout
    assert "revoked" in shown_record and "CVE-2026-0001" in shown_record

    again = build(env, recipe)  # the revoked build's inputs: the cache does not serve it
    assert "cached_from" not in again and again["image_version"] == "1.1-3", again


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
    built = schedule_run_now(env, schedule_id)
    assert built["outcome"] == "built", built
    child_1 = record(env, built["build_id"])
    assert child_1["ancestry"] == [first["id"]] and child_1["image_version"] == "2.0-1"
    unchanged = schedule_run_now(env, schedule_id)  # the base channel did not move
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
    rebuilt = schedule_run_now(env, schedule_id)
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
