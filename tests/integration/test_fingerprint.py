"""A build's fingerprint read for real: a signed apt repository of the test's
own (dpkg-deb, apt-ftparchive, gpg) served on loopback, its InRelease read
through the builder's egress proxy. The apt part moves when a package is
added and only then; the recipe part moves with a file's contents; a mirror
the policy forbids is refused before any connection."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from apt_repo import AptRepo
from support import ImageServer

from kiln_builder import fingerprint
from kiln_builder.bootstrap import layer_key, spec_for
from kiln_builder.egress import LOCAL, STRICT, EgressPolicy, EgressRefused, Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.fingerprint import AptSource, Inputs
from kiln_common.errors import FailedPrecondition
from kiln_recipe import Recipe, load_recipe

RECIPE = """\
name: fp
version: "1.0"
from:
  bootstrap: {distro: debian, release: stable, mirror: MIRROR}
files:
  - {path: /etc/motd, source: motd}
outputs: [tar.zst]
"""


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[tuple[AptRepo, ImageServer]]:
    apt = AptRepo(tmp_path / "repo")
    apt.add("kiln-probe", "1.0")
    with ImageServer(apt.root) as server:
        yield apt, server


async def route_for(policy: EgressPolicy) -> AsyncIterator[Route]:
    async with EgressProxy(policy) as proxy:
        yield Route(policy, proxy.url)


@pytest.fixture
async def local() -> AsyncIterator[Route]:
    async for route in route_for(LOCAL):
        yield route


def write_recipe(where: Path, mirror: str, motd: str = "hello\n") -> Path:
    where.mkdir(parents=True, exist_ok=True)
    (where / "motd").write_text(motd)
    path = where / "recipe.yaml"
    path.write_text(RECIPE.replace("MIRROR", mirror))
    return path


async def test_the_apt_part_is_the_inrelease_digest_and_moves_with_the_repository(
    repo: tuple[AptRepo, ImageServer], local: Route
) -> None:
    apt, server = repo
    source = AptSource(server.url, "stable")
    first = await fingerprint.release_digest(source, local)
    signed = (apt.dists / "InRelease").read_bytes()
    assert signed.startswith(b"-----BEGIN PGP SIGNED MESSAGE-----")
    assert first == "sha256:" + hashlib.sha256(signed).hexdigest()
    assert await fingerprint.release_digest(source, local) == first  # unchanged: the same

    apt.add("kiln-probe", "1.1")
    moved = await fingerprint.release_digest(source, local)
    assert moved != first
    assert len(server.gets("dists/stable/InRelease")) == 3

    (apt.dists / "InRelease").unlink()  # an unsigned repository: its Release file
    release = (apt.dists / "Release").read_bytes()
    assert await fingerprint.release_digest(source, local) == (
        "sha256:" + hashlib.sha256(release).hexdigest()
    )


async def test_a_missing_suite_is_a_readable_error(
    repo: tuple[AptRepo, ImageServer], local: Route
) -> None:
    _, server = repo
    with pytest.raises(FailedPrecondition, match="no dists/sid/InRelease or Release"):
        await fingerprint.release_digest(AptSource(server.url, "sid"), local)


async def test_a_forbidden_mirror_is_refused_before_any_connection(
    repo: tuple[AptRepo, ImageServer],
) -> None:
    _, server = repo
    async for strict in route_for(STRICT):
        with pytest.raises(EgressRefused, match="loopback"):
            await fingerprint.release_digest(AptSource(server.url, "stable"), strict)
    assert server.connections == 0


async def test_the_parts_say_what_changed_between_two_builds(
    repo: tuple[AptRepo, ImageServer], local: Route, tmp_path: Path
) -> None:
    apt, server = repo
    inputs = Inputs(route=local)

    async def of(recipe_file: Path) -> dict[str, str]:
        recipe = load_recipe(recipe_file)
        found = await fingerprint.compute(recipe, recipe.digest(), inputs)
        assert found.digest == fingerprint.digest_of(found.parts)
        return {p.name: p.value for p in found.parts}

    first = await of(write_recipe(tmp_path / "a", server.url))
    assert list(first) == ["recipe", f"apt {server.url} stable", "builder"]
    assert first["builder"].startswith(fingerprint.ENGINE_VERSION)
    assert await of(write_recipe(tmp_path / "b", server.url)) == first  # same inputs

    motd = await of(write_recipe(tmp_path / "c", server.url, motd="changed\n"))
    assert [k for k in first if first[k] != motd[k]] == ["recipe"]  # a file's contents

    apt.add("kiln-probe", "1.2")
    mirror = await of(write_recipe(tmp_path / "d", server.url))
    assert [k for k in first if first[k] != mirror[k]] == [f"apt {server.url} stable"]


async def test_the_bootstrap_layer_key_follows_the_mirror_state(
    repo: tuple[AptRepo, ImageServer], local: Route
) -> None:
    apt, server = repo
    spec = spec_for("debian", "stable", "amd64", server.url, 1_700_000_000)
    source = AptSource(server.url, "stable")
    before = layer_key(spec, ((source.part, await fingerprint.release_digest(source, local)),))
    assert before != spec.key()  # a bake that read no state keeps the recipe's key
    apt.add("kiln-probe", "2.0")
    after = layer_key(spec, ((source.part, await fingerprint.release_digest(source, local)),))
    assert after != before


# ---- a base that follows its release's checksum file --------------------------------------

FOLLOWING = """\
name: follows
version: "1.0"
from:
  image: {url: IMAGE, checksums: SUMS}
outputs: [qcow2]
"""


def release(root: Path, data: bytes, style: str = "gnu") -> None:
    """An image and its SHA512SUMS, as a distribution publishes them."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "debian-12-genericcloud-amd64.qcow2").write_bytes(data)
    digest = hashlib.sha512(data).hexdigest()
    line = (f"SHA512 (debian-12-genericcloud-amd64.qcow2) = {digest}" if style == "bsd"
            else f"{digest}  debian-12-genericcloud-amd64.qcow2")  # fmt: skip
    other = hashlib.sha512(b"another file").hexdigest()
    (root / "SHA512SUMS").write_text(f"{other}  debian-12-nocloud-amd64.qcow2\n{line}\n")


async def test_a_followed_base_is_the_digest_its_release_lists_now_and_verified_by_it(
    tmp_path: Path, local: Route
) -> None:
    from kiln_builder.base.download import BaseDigestMismatch
    from kiln_builder.base.fetch import fetch_base

    served = tmp_path / "cloud"
    release(served, b"release one" * 1000)
    with ImageServer(served) as server:
        text = FOLLOWING.replace("IMAGE", f"{server.url}/debian-12-genericcloud-amd64.qcow2")
        text = text.replace("SUMS", f"{server.url}/SHA512SUMS")
        (tmp_path / "r").mkdir()
        recipe = load_recipe_text(text, tmp_path / "r")
        ref = recipe.from_.image
        assert ref is not None
        inputs = Inputs(route=local)
        first = await fingerprint.base_digest(ref, inputs)
        assert first == "sha512:" + hashlib.sha512(b"release one" * 1000).hexdigest()

        cache = tmp_path / "cache"
        base = await fetch_base(ref, cache, tmp_path, storage=None, route=local, followed=first)
        assert base.sha256 == hashlib.sha256(b"release one" * 1000).hexdigest()
        assert base.downloaded == 11000
        again = await fetch_base(ref, cache, tmp_path, storage=None, route=local)
        assert (again.path, again.downloaded) == (base.path, 0)  # cached, by its SHA-512
        gets = len(server.gets("debian-12-genericcloud-amd64.qcow2"))

        release(served, b"release two" * 1000, style="bsd")  # the release moved on
        moved = await fingerprint.base_digest(ref, inputs)
        assert moved == "sha512:" + hashlib.sha512(b"release two" * 1000).hexdigest()
        with pytest.raises(BaseDigestMismatch, match="SHA-512"):  # verified by what was read
            await fetch_base(ref, tmp_path / "c2", tmp_path, storage=None, route=local,
                             followed=first)  # fmt: skip
        assert not list((tmp_path / "c2/bases").glob("*.part"))
        assert len(server.gets("debian-12-genericcloud-amd64.qcow2")) == gets + 1

        (served / "SHA512SUMS").write_text("garbage\n")
        with pytest.raises(FailedPrecondition, match="lists no SHA-256 or SHA-512"):
            await fingerprint.base_digest(ref, inputs)


def load_recipe_text(text: str, where: Path) -> Recipe:
    from kiln_recipe import parse_recipe

    return parse_recipe(text, where)
