"""The result cache for real, through `kiln up` and `kiln build`: a repeat of a
built recipe returns in seconds as its own record pointing at the same
artifacts (cached_from in the record, the CLI, --json and the event); once one
of those artifacts is deleted the next repeat builds anew; --no-cache builds
anew whatever the cache holds. Every record carries its fingerprint."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from support import kiln, kiln_up

from kiln_common.events import from_json, subject_for
from kiln_devstack.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.build]

RECIPE = """\
name: cached
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "echo cached > /etc/kiln-cached"
outputs: [tar.zst]
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with kiln_up(tmp_path) as environ:
        yield environ


def build(env: dict[str, str], recipe: Path, *flags: str) -> tuple[dict[str, object], float]:
    """`kiln build --follow`, then the record as `kiln build show --json` has it."""
    started = time.monotonic()
    done = kiln(env, "build", str(recipe), "--follow", "--no-boot-test", *flags, timeout=900)
    took = time.monotonic() - started
    build_id = done.stderr.split()[1]
    assert f"build {build_id} succeeded" in done.stderr
    shown = json.loads(kiln(env, "build", "show", build_id, "--json").stdout)
    return shown, took


def results(record: dict[str, object]) -> set[str]:
    return {str(a["artifact_id"]) for a in record["artifacts"] if a["kind"] != "build-log"}  # type: ignore[attr-defined, index]


async def last_succeeded(url: str) -> dict[str, object]:
    nc = await nats.connect(url)
    try:
        found = await nc.jetstream().get_last_msg("KILN_EVENTS", subject_for("build.succeeded"))
        return dict(from_json(found.data or b"").data)
    finally:
        await nc.close()


def test_a_repeat_returns_the_same_artifacts_at_once_until_one_is_gone(
    env: dict[str, str], tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    first, built_in = build(env, recipe)
    parts = {p["name"]: p["value"] for p in first["fingerprint"]["parts"]}  # type: ignore[index]
    assert next(iter(parts)) == "recipe" and list(parts)[-1] == "builder"
    apt = [name for name in parts if name.startswith("apt ") and name.endswith(" bookworm")]
    assert len(apt) == 1 and parts[apt[0]].startswith("sha256:")
    assert "cached_from" not in first

    repeat, repeated_in = build(env, recipe)
    print(f"built in {built_in:.1f}s; the cached repeat in {repeated_in:.1f}s")
    assert repeat["id"] != first["id"] and repeat["cached_from"] == first["id"]
    assert repeat["fingerprint"] == first["fingerprint"]
    assert results(repeat) == results(first)  # the same artifacts, no copies
    assert repeated_in < 30 and not repeat.get("steps")
    shown = kiln(env, "build", "show", str(repeat["id"])).stdout
    assert f"cached from {first['id']}" in shown and first["fingerprint"]["digest"] in shown  # type: ignore[index]
    event = asyncio.run(last_succeeded(Stack.load(Path(env["KILN_HOME"])).nats_url))  # type: ignore[union-attr]
    assert event["id"] == repeat["id"] and event["cached_from"] == first["id"]
    # The repeat is published as any build is: its artifacts are its origin's.
    published = json.loads(
        kiln(env, "publish", str(repeat["id"]), "--marketplace", "--json").stdout
    )
    assert published["state"] == "STATE_DONE", published
    sent = {r["artifact_id"] for r in published["results"]}
    assert sent and sent <= results(first)

    sbom = next(a["artifact_id"] for a in first["artifacts"] if a["kind"] == "sbom")  # type: ignore[index, union-attr]
    kiln(env, "artifact", "rm", str(sbom))
    anew, _ = build(env, recipe)  # the cached result is no longer whole
    assert "cached_from" not in anew and not results(anew) & results(first)
    assert anew["fingerprint"] == first["fingerprint"]

    forced, _ = build(env, recipe, "--no-cache")  # a whole result exists: anew's
    assert "cached_from" not in forced and not results(forced) & results(anew)
    assert not any(s.get("cached") for s in forced["steps"])  # type: ignore[attr-defined, union-attr]
