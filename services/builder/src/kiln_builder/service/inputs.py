"""A build's inputs as the builder service reads them (kiln_builder.fingerprint)
with its settings: through an egress proxy of its own under the builder's
egress policy (the mirrors are the recipe's), its storage for an artifact
base, its publisher for a marketplace one. The worker reads them before a
build; a schedule's run before it decides whether to build."""

from __future__ import annotations

from kiln_builder import fingerprint
from kiln_builder.service.settings import BuilderSettings
from kiln_builder.storage import StorageAccess
from kiln_common.builds import Fingerprint
from kiln_recipe.schema import Recipe


async def read(
    settings: BuilderSettings, storage: StorageAccess, recipe: Recipe, recipe_digest: str
) -> Fingerprint:
    vm = recipe.isolation == "vm" or bool(settings.isolation_options().get("force_vm"))
    return await fingerprint.read(
        recipe, recipe_digest, settings.egress_policy(), default_mirror=settings.default_mirror,
        storage=storage, publisher=settings.publisher or None, vm=vm,
    )  # fmt: skip
