"""A recipe's own apt repository moving on, for real: `kiln up`, a signed
repository of the test's own (dpkg-deb, apt-ftparchive, gpg) served from a
network namespace the test makes, a recipe installing its package. Unchanged,
a repeat is the cached result; once a newer version is published, the next
build's fingerprint differs in that repository's part alone, the build runs
(its bootstrap layer cached, its packages step not), and its image holds the
new version."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from apt_repo import AptRepo
from netns_http import served_from_namespace
from support import kiln, kiln_up

pytestmark = [pytest.mark.e2e, pytest.mark.build]

RECIPE = """\
name: mirrored
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
repositories:
  - {uri: URI, suites: [stable], key: repo.asc}
packages: [kiln-probe]
outputs: [tar.zst]
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with kiln_up(tmp_path) as environ:
        yield environ


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AptRepo, str]]:
    repo = AptRepo(tmp_path / "repo")
    repo.add("kiln-probe", "1.0")
    with served_from_namespace(repo.root) as url:
        yield repo, url


def build(env: dict[str, str], recipe: Path) -> dict[str, object]:
    done = kiln(env, "build", str(recipe), "--follow", "--no-boot-test", timeout=900)
    build_id = done.stderr.split()[1]
    assert f"build {build_id} succeeded" in done.stderr, done.stderr
    return json.loads(kiln(env, "build", "show", build_id, "--json").stdout)


def parts(record: dict[str, object]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in record["fingerprint"]["parts"]}  # type: ignore[index]


def probe_version(env: dict[str, str], record: dict[str, object], where: Path) -> str:
    image = next(a for a in record["artifacts"] if a["kind"] == "image")  # type: ignore[attr-defined]
    tar = where / f"{record['id']}.tar.zst"
    kiln(env, "artifact", "get", image["artifact_id"], "-o", str(tar))
    found = subprocess.run(["tar", "--zstd", "-xOf", tar, "./usr/share/kiln-probe/version"],
                           capture_output=True, check=True)  # fmt: skip
    return found.stdout.decode().strip()


def test_a_new_package_in_the_recipes_repository_rebuilds_and_otherwise_not(
    env: dict[str, str], served: tuple[AptRepo, str], tmp_path: Path
) -> None:
    repo, url = served
    recipe = tmp_path / "recipe" / "recipe.yaml"
    recipe.parent.mkdir()
    (recipe.parent / "repo.asc").write_bytes(repo.key.read_bytes())
    recipe.write_text(RECIPE.replace("URI", url))

    first = build(env, recipe)
    assert parts(first)[f"apt {url} stable"].startswith("sha256:")
    assert probe_version(env, first, tmp_path) == "1.0"

    unchanged = build(env, recipe)
    assert unchanged["cached_from"] == first["id"]

    repo.add("kiln-probe", "1.1")
    moved = build(env, recipe)
    assert "cached_from" not in moved
    changed = [name for name in parts(first) if parts(first)[name] != parts(moved)[name]]
    assert changed == [f"apt {url} stable"]
    steps = {s["name"]: s.get("cached", False) for s in moved["steps"]}  # type: ignore[attr-defined]
    assert steps["bootstrap"] and not steps["packages"]
    assert probe_version(env, moved, tmp_path) == "1.1"
