"""A build's fingerprint: every input that decides its image, each read and
digested before the build runs, so that two builds with equal fingerprints
make the same image and the second need not run (the result cache), and a
schedule can tell that nothing changed without building.

The parts (the record keeps each, so a person sees what changed):
- `recipe`: the recipe's digest, which covers the contents of its files and
  scripts (kiln_recipe's Recipe.digest);
- `base`: a customised build's base image: the pinned SHA-256 of a URL (or
  the digest its release's checksum file lists for it now), the stored
  artifact's, the marketplace entry's; a Glance image by its cloud and id
  (Glance never changes an active image's data);
- `apt <uri> <suite>`: for a from-scratch build, the SHA-256 of the suite's
  InRelease (or Release) file on the mirror it bootstraps from and installs
  packages from, and the same for each suite of the recipe's extra
  repositories (any build), read through the build's egress route;
- `builder`: the engine's and bootstrap's versions, and the appliance's key
  when the recipe's edits run in the vm appliance;
- `unpinned`: a customised build that installs packages reads the base
  image's own apt sources, which cannot be read before the image is open:
  a value of its own each time, so no two such builds count as the same.

The apt parts also enter the layer keys (the mirror's the bootstrap's, the
repositories' the packages step's): a source that moved on gives new layers,
not the cached ones of its old state."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from dataclasses import dataclass

from kiln_builder.base import checksums, marketplace
from kiln_builder.base.download import http_opener, read_small
from kiln_builder.base.fetch import CHANNEL_NEEDS_SERVICE
from kiln_builder.base.published import describe, need_publisher
from kiln_builder.bootstrap import BOOTSTRAP_VERSION, resolve_mirror
from kiln_builder.egress import EgressPolicy, Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.storage import StorageAccess
from kiln_common.builds import Fingerprint, FingerprintPart
from kiln_common.errors import FailedPrecondition
from kiln_recipe.schema import ImageRef, Recipe

ENGINE_VERSION = "kiln-engine-1"  # bump when the same inputs make a different image
RELEASE_FILES = ("InRelease", "Release")  # apt's order: the signed one first
MAX_RELEASE_BYTES = 32 << 20  # Debian's InRelease is about 150 KB


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str

    @property
    def part(self) -> str:
        return f"apt {self.uri} {self.suite}"


@dataclass(frozen=True)
class Inputs:
    """Where a fingerprint's parts are read from: the builder's settings."""

    default_mirror: str = ""
    route: Route | None = None  # the egress route for the mirrors (None: direct)
    storage: StorageAccess | None = None  # for an artifact base
    publisher: str | None = None  # for a marketplace base
    vm: bool = False  # the recipe's edits run in the vm appliance


def apt_sources(recipe: Recipe, default_mirror: str = "") -> list[AptSource]:
    """The apt sources a build reads that the recipe names: a from-scratch
    build's bootstrap mirror suite (which the tree keeps for the packages
    step), then each suite of the recipe's extra repositories."""
    return [*mirror_sources(recipe, default_mirror), *repository_sources(recipe)]


def mirror_sources(recipe: Recipe, default_mirror: str = "") -> list[AptSource]:
    boot = recipe.from_.bootstrap
    if boot is None:
        return []
    mirror = resolve_mirror(boot.distro, boot.mirror, default_mirror)
    return [AptSource(mirror.rstrip("/"), boot.release)]


def repository_sources(recipe: Recipe) -> list[AptSource]:
    return [AptSource(repo.uri, suite) for repo in recipe.repositories for suite in repo.suites]


async def compute(recipe: Recipe, recipe_digest: str, inputs: Inputs) -> Fingerprint:
    parts = [FingerprintPart("recipe", f"sha256:{recipe_digest}")]
    if recipe.from_.image is not None:
        parts.append(FingerprintPart("base", await base_digest(recipe.from_.image, inputs)))
    for source in apt_sources(recipe, inputs.default_mirror):
        parts.append(FingerprintPart(source.part, await release_digest(source, inputs.route)))
    if recipe.from_.image is not None and recipe.packages:
        # Its packages come from the base image's own apt sources, which are
        # known only once the image is open: such a build is never "the same
        # inputs" as another (no result cache, no unchanged schedule run).
        unread = f"the base image's apt sources, read at build time ({secrets.token_hex(6)})"
        parts.append(FingerprintPart("unpinned", unread))
    parts.append(FingerprintPart("builder", builder_version(inputs.vm)))
    return Fingerprint(digest_of(parts), parts)


async def read(
    recipe: Recipe, recipe_digest: str, policy: EgressPolicy, *, default_mirror: str = "",
    storage: StorageAccess | None = None, publisher: str | None = None, vm: bool = False,
) -> Fingerprint:  # fmt: skip
    """compute(), its sources reached through an egress proxy of its own under
    policy (the mirrors and checksum files are the recipe's): how a worker, a
    schedule's run and `kiln-builder bake` read a build's inputs."""
    async with EgressProxy(policy) as proxy:
        route = Route(policy, proxy.url)
        inputs = Inputs(default_mirror, route, storage, publisher, vm)
        return await compute(recipe, recipe_digest, inputs)


def digest_of(parts: list[FingerprintPart]) -> str:
    canon = json.dumps(sorted((p.name, p.value) for p in parts))
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def base_part(fingerprint: Fingerprint | None) -> str:
    """The base part's value ("" without one): the digest a followed release's
    download is verified against, as the fingerprint read it."""
    parts = fingerprint.parts if fingerprint is not None else []
    return next((p.value for p in parts if p.name == "base"), "")


def apt_state(fingerprint: Fingerprint | None) -> tuple[tuple[str, str], ...]:
    """The apt parts, for the layer keys."""
    if fingerprint is None:
        return ()
    return tuple((p.name, p.value) for p in fingerprint.parts if p.name.startswith("apt "))


def builder_version(vm: bool) -> str:
    version = f"{ENGINE_VERSION} {BOOTSTRAP_VERSION}"
    if vm:  # the appliance runs the recipe's packages, files and run
        from kiln_builder.isolation.appliance.image import appliance_key

        version += f" appliance-{appliance_key()[:16]}"
    return version


async def base_digest(ref: ImageRef, inputs: Inputs) -> str:
    if ref.channel is not None:
        raise FailedPrecondition(CHANNEL_NEEDS_SERVICE)
    if ref.url is not None and ref.checksums is not None:
        # The release's current image: the download is verified against it.
        return await checksums.pinned_digest(ref.url, ref.checksums, inputs.route)
    if ref.url is not None:
        return f"sha256:{ref.sha256}"  # the download is verified against it
    if ref.artifact is not None:
        if inputs.storage is None:
            raise FailedPrecondition(
                "from.image.artifact needs the storage service: give the builder its address"
            )
        async with inputs.storage.client() as client:
            return f"sha256:{(await client.stat(ref.artifact)).checksums.sha256}"
    if ref.marketplace is not None:
        source = f"marketplace:{ref.marketplace}"
        entry = await marketplace.valid_entry(
            ref.marketplace, need_publisher(source, inputs.publisher)
        )
        return f"sha256:{entry.sha256}"
    return describe(ref)  # an active Glance image's data never changes


async def release_digest(source: AptSource, route: Route | None) -> str:
    """The SHA-256 of the suite's InRelease, else of its Release file."""
    for name in RELEASE_FILES:
        url = f"{source.uri}/dists/{source.suite}/{name}"
        if route is not None:
            await route.policy.check_url(url, "the mirror")  # before anything is sent
        data = await asyncio.to_thread(read_small, url, http_opener(route), MAX_RELEASE_BYTES)
        if data is not None:
            return "sha256:" + hashlib.sha256(data).hexdigest()
    raise FailedPrecondition(
        f"{source.uri} has no dists/{source.suite}/InRelease or Release: is it an apt"
        f" mirror with the suite {source.suite}?"
    )
