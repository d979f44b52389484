"""A scheduled recipe whose apt repository moves on, for real: `kiln up` with
the session's Keystone and Glance, a signed repository of the test's own
(dpkg-deb, apt-ftparchive, gpg) served from a network namespace the test
makes, a schedule of a recipe that installs its package and publishes to
Glance with `keep: 2`. Unchanged, a run is `unchanged` (no build, an event
build.skipped); after a newer version is published, the run is `built`, its
fingerprint differs in that repository's part alone, its image holds the new
version (its SBOM says so), and Glance keeps the newest two images of the
name, the older hidden."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from apt_repo import AptRepo
from netns_http import served_from_namespace
from support import event_data, glance_images, kiln, kiln_up, schedule_run_now, wait_until

from kiln_common.ids import new_id
from kiln_devstack.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.build]

RECIPE = """\
name: mirrored
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
repositories:
  - {uri: URI, suites: [stable], key: repo.asc}
packages: [kiln-probe]
test: {boot: false}
publish:
  glance: {cloud: kiln-a, name: NAME, keep: 2}
"""


@pytest.fixture
def env(tmp_path: Path, clouds_yaml: Path, glance: object) -> Iterator[dict[str, str]]:
    with kiln_up(tmp_path / "stack", OS_CLIENT_CONFIG_FILE=str(clouds_yaml)) as environ:
        yield environ


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AptRepo, str]]:
    repo = AptRepo(tmp_path / "repo")
    repo.add("kiln-probe", "1.0")
    with served_from_namespace(repo.root) as url:
        yield repo, url


def record(env: dict[str, str], build_id: object) -> dict[str, object]:
    return json.loads(kiln(env, "build", "show", str(build_id), "--json").stdout)


def parts(build: dict[str, object]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in build["fingerprint"]["parts"]}  # type: ignore[index]


def probe_version(env: dict[str, str], build: dict[str, object], where: Path) -> str:
    """kiln-probe's version in the image, as its SPDX SBOM lists it."""
    sbom = next(a for a in build["artifacts"] if a["kind"] == "sbom")  # type: ignore[attr-defined]
    path = where / f"{build['id']}.spdx.json"
    kiln(env, "artifact", "get", sbom["artifact_id"], "-o", str(path))
    packages = json.loads(path.read_text())["packages"]
    return next(p["versionInfo"] for p in packages if p["name"] == "kiln-probe")


def image_of(build: dict[str, object]) -> str:
    return next(a["artifact_id"] for a in build["artifacts"] if a["kind"] == "image")  # type: ignore[attr-defined]


def test_a_scheduled_recipe_rebuilds_when_its_repository_moves_and_only_then(
    env: dict[str, str], served: tuple[AptRepo, str], clouds_yaml: Path, tmp_path: Path
) -> None:
    repo, url = served
    name = f"kiln-mirrored-{new_id()}"
    recipe = tmp_path / "recipe" / "recipe.yaml"
    recipe.parent.mkdir()
    (recipe.parent / "repo.asc").write_bytes(repo.key.read_bytes())
    recipe.write_text(RECIPE.replace("URI", url).replace("NAME", name))
    schedule_id = kiln(env, "schedule", "add", str(recipe), "--every", "1d").stdout.strip()

    first_run = schedule_run_now(env, schedule_id)
    assert first_run["outcome"] == "built", first_run
    first = record(env, first_run["build_id"])
    assert first["schedule_id"] == schedule_id
    assert first_run["fingerprint"] == first["fingerprint"]["digest"]  # type: ignore[index]
    assert parts(first)[f"apt {url} stable"].startswith("sha256:")
    assert probe_version(env, first, tmp_path) == "1.0"

    unchanged = schedule_run_now(env, schedule_id)
    assert unchanged["outcome"] == "unchanged" and not unchanged.get("build_id")
    assert unchanged["fingerprint"] == first["fingerprint"]["digest"]  # type: ignore[index]
    stack = Stack.load(Path(env["KILN_HOME"]))
    assert stack is not None
    events = event_data(stack.nats_url, "build.skipped", schedule_id)
    assert [e["last_build"] for e in events] == [first["id"]]

    builds = [first]
    for version in ("1.1", "1.2"):
        repo.add("kiln-probe", version)
        run = schedule_run_now(env, schedule_id)
        assert run["outcome"] == "built", run
        build = record(env, run["build_id"])
        changed = [k for k in parts(first) if parts(builds[-1])[k] != parts(build)[k]]
        assert changed == [f"apt {url} stable"]
        steps = {s["name"]: s.get("cached", False) for s in build["steps"]}  # type: ignore[attr-defined]
        assert steps["bootstrap"] and not steps["packages"]
        assert probe_version(env, build, tmp_path) == version
        builds.append(build)

    def rotated() -> list[dict[str, object]] | None:
        images = glance_images(clouds_yaml, name, cloud="kiln-a")
        hidden = [i for i in images if i.get("os_hidden")]
        return images if len(images) == 3 and len(hidden) == 1 else None

    images = wait_until("Glance to keep two images of the name", rotated, timeout=300, interval=2)
    assert images is not None
    by_artifact = {i["kiln_artifact_id"]: i for i in images}
    hidden = [by_artifact[image_of(b)]["os_hidden"] for b in builds]
    assert hidden == [True, False, False]  # the oldest retired
