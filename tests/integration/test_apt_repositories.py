"""A recipe's extra apt repositories for real: a signed repository of the
test's own (dpkg-deb, apt-ftparchive, gpg), served from a network namespace
the test makes, configured in a copy of the cached Debian root and installed
from by apt in the hardened sandbox. A newer version published is what the
next install gets; a repository signed by another key is refused by apt."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from apt_repo import AptRepo
from netns_http import served_from_namespace

from kiln_builder import apt_repos, customize
from kiln_builder.engine import DEFAULT_EPOCH
from kiln_common.proc import ProcessError
from kiln_recipe import parse_recipe

pytestmark = [
    pytest.mark.integration,
    pytest.mark.build,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, loop mounts, bwrap"),
]

RECIPE = """\
name: repos
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
repositories:
  - {uri: URI, suites: [stable], key: repo.asc}
packages: [kiln-probe]
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AptRepo, str]]:
    repo = AptRepo(tmp_path / "repo")
    repo.add("kiln-probe", "1.0")
    with served_from_namespace(repo.root) as url:
        yield repo, url


def recipe_for(where: Path, url: str, key: bytes) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "repo.asc").write_bytes(key)
    return where


async def test_packages_come_from_the_recipes_repository_signed_by_its_key(
    served: tuple[AptRepo, str], image_root: Path, tmp_path: Path
) -> None:
    repo, url = served
    where = recipe_for(tmp_path / "recipe", url, repo.key.read_bytes())
    recipe = parse_recipe(RECIPE.replace("URI", url), where)
    apt_repos.configure(image_root, recipe)
    sources = (image_root / apt_repos.SOURCES.lstrip("/")).read_text()
    assert (
        f"URIs: {url}/" in sources and "Signed-By: /etc/apt/keyrings/kiln-recipe-1.asc" in sources
    )
    keyring = image_root / "etc/apt/keyrings/kiln-recipe-1.asc"
    assert keyring.read_bytes() == repo.key.read_bytes()

    await customize.install_packages(image_root, ["kiln-probe"], DEFAULT_EPOCH, repositories=True)
    installed = image_root / "usr/share/kiln-probe/version"
    assert installed.read_text() == "1.0\n"

    repo.add("kiln-probe", "1.1")  # the repository moved on: apt takes the newer one
    await customize.install_packages(image_root, ["kiln-probe"], DEFAULT_EPOCH, repositories=True)
    assert installed.read_text() == "1.1\n"


async def test_a_repository_signed_by_another_key_is_refused(
    served: tuple[AptRepo, str], image_root: Path, tmp_path: Path
) -> None:
    repo, url = served
    stranger = AptRepo(tmp_path / "stranger")  # a key of its own, not the repository's
    where = recipe_for(tmp_path / "recipe", url, stranger.key.read_bytes())
    recipe = parse_recipe(RECIPE.replace("URI", url).replace("kiln-probe", "kiln-other"), where)
    repo.add("kiln-other", "1.0")
    apt_repos.configure(image_root, recipe)
    with pytest.raises(ProcessError) as failed:
        await customize.install_packages(
            image_root, ["kiln-other"], DEFAULT_EPOCH, repositories=True
        )
    assert "apt-get update" in str(failed.value)  # refused there, not "not found" later
    assert "NO_PUBKEY" in str(failed.value) or "not signed" in str(failed.value)
    assert not (image_root / "usr/share/kiln-other").exists()
