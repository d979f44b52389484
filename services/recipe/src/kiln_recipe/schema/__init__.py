"""The recipe's schema: what a user writes to describe an image.

The schema lives here and only here, as frozen pydantic models, one module per
section of the recipe (source: `from`, content: `files` and `run`, checks, disk:
`disk` and `outputs`, boot_test: `test`, publish) and the whole (recipe); the
loader (kiln_recipe.loader) checks all of it before any privileged work starts.
See docs/recipe.md.
"""

from kiln_recipe.schema.base import (
    CHECK_PROFILES,
    COMPRESSIONS,
    DEFAULT_COMMAND_TIMEOUT,
    DISTROS,
    FORMATS,
    INTERNALLY_COMPRESSED,
    MAX_BOOT_TIMEOUT,
    MAX_DISK,
    MAX_RECIPE_BYTES,
    MAX_TEST_COMMANDS,
    MIN_BOOT_TIMEOUT,
    MIN_DISK,
    SYSPREP_OPERATIONS,
    CheckProfile,
    Command,
    Compression,
    Distro,
    Format,
    GiB,
    KiB,
    MiB,
    Model,
    PackageName,
    Sysprep,
    SysprepOp,
    TiB,
    parse_seconds,
    parse_size,
)
from kiln_recipe.schema.boot_test import BootTest, TestSpec
from kiln_recipe.schema.checks import CheckEntry, CheckRequest, CheckSpec
from kiln_recipe.schema.content import FileSpec, RunStep
from kiln_recipe.schema.disk import Disk, OutputSpec
from kiln_recipe.schema.publish import (
    MAX_VALID_FOR,
    GlancePublish,
    MarketplacePublish,
    Publish,
    RetireAction,
    Visibility,
)
from kiln_recipe.schema.recipe import Recipe
from kiln_recipe.schema.repositories import Repository
from kiln_recipe.schema.source import Bootstrap, From, GlanceRef, ImageRef

__all__ = [
    "CHECK_PROFILES",
    "COMPRESSIONS",
    "DEFAULT_COMMAND_TIMEOUT",
    "DISTROS",
    "FORMATS",
    "INTERNALLY_COMPRESSED",
    "MAX_BOOT_TIMEOUT",
    "MAX_DISK",
    "MAX_RECIPE_BYTES",
    "MAX_TEST_COMMANDS",
    "MAX_VALID_FOR",
    "MIN_BOOT_TIMEOUT",
    "MIN_DISK",
    "SYSPREP_OPERATIONS",
    "BootTest",
    "Bootstrap",
    "CheckEntry",
    "CheckProfile",
    "CheckRequest",
    "CheckSpec",
    "Command",
    "Compression",
    "Disk",
    "Distro",
    "FileSpec",
    "Format",
    "From",
    "GiB",
    "GlancePublish",
    "GlanceRef",
    "ImageRef",
    "KiB",
    "MarketplacePublish",
    "MiB",
    "Model",
    "OutputSpec",
    "PackageName",
    "Publish",
    "Recipe",
    "Repository",
    "RetireAction",
    "RunStep",
    "Sysprep",
    "SysprepOp",
    "TestSpec",
    "TiB",
    "Visibility",
    "parse_seconds",
    "parse_size",
]
