"""A build's inputs as the builder service reads them (kiln_builder.fingerprint)
with its settings: through an egress proxy of its own under the builder's
egress policy (the mirrors are the recipe's), its storage for an artifact
base, its publisher for a marketplace one. The worker reads them before a
build; a schedule's run before it decides whether to build."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln_builder import fingerprint
from kiln_builder.service.settings import BuilderSettings
from kiln_builder.storage import StorageAccess
from kiln_common.builds import Build, Fingerprint
from kiln_common.errors import FailedPrecondition, KilnError
from kiln_recipe.schema import ImageRef, Recipe

if TYPE_CHECKING:
    from kiln_builder.service.channels.core import ChannelCore

log = logging.getLogger(__name__)
BASE_FORMATS = ("qcow2", "qcow2c", "raw", "vmdk")  # what a customised build opens


async def read(
    settings: BuilderSettings, storage: StorageAccess, recipe: Recipe, recipe_digest: str
) -> Fingerprint:
    vm = recipe.isolation == "vm" or bool(settings.isolation_options().get("force_vm"))
    return await fingerprint.read(
        recipe, recipe_digest, settings.egress_policy(), default_mirror=settings.default_mirror,
        storage=storage, publisher=settings.publisher or None, vm=vm,
    )  # fmt: skip


@dataclass(frozen=True)
class Based:
    """A recipe with its base made concrete, and the chain of builds under it."""

    recipe: Recipe
    ancestry: list[str] = field(default_factory=list)  # its base's build, that one's base's, ...


async def resolve_base(
    recipe: Recipe, tenant: str, channels: ChannelCore | None, storage: StorageAccess | None
) -> Based:
    """A channel base (`from.image.channel: NAME/CHANNEL`) becomes the image
    artifact of the build the channel points at now: the fingerprint then
    digests that image, so the channel moving changes it. A base that is a
    Kiln build's artifact (by channel or by id) gives the build's ancestry."""
    ref = recipe.from_.image
    if ref is None or (ref.channel is None and ref.artifact is None):
        return Based(recipe)
    if ref.channel is not None:
        if channels is None:
            raise FailedPrecondition("from.image.channel needs the builder service's channels")
        base = await channels.pointed(tenant, *ref.channel_ref())
        image = image_artifact(base)
        concrete = ImageRef(artifact=image)
        recipe = recipe.model_copy(
            update={"from_": recipe.from_.model_copy(update={"image": concrete})}
        )
        return Based(recipe, [base.id, *base.ancestry])
    assert ref.artifact is not None
    return Based(recipe, await _artifact_ancestry(ref.artifact, tenant, channels, storage))


def image_artifact(build: Build) -> str:
    """The build's disk image a customised build can start from: qcow2 first."""
    images = [a for a in build.artifacts if a.kind == "image" and a.format in BASE_FORMATS]
    if not images:
        raise FailedPrecondition(f"build {build.id} has no qcow2, raw or vmdk image to build on")
    return min(images, key=lambda a: BASE_FORMATS.index(a.format)).artifact_id


async def _artifact_ancestry(
    artifact_id: str, tenant: str, channels: ChannelCore | None, storage: StorageAccess | None
) -> list[str]:
    """The chain under an artifact base that a build of the tenant's made:
    a record of what it came from, so a failure to read it costs the build
    its ancestry, not its run."""
    if channels is None or storage is None:
        return []
    try:
        async with storage.client() as client:
            made_by = (await client.stat(artifact_id)).labels.get("build-id", "")
        build = await channels.record(made_by) if made_by else None
    except KilnError as exc:
        log.warning("the ancestry of artifact %s is unknown: %s", artifact_id, exc)
        return []
    if build is None or build.tenant != tenant:
        return []
    return [build.id, *build.ancestry]
