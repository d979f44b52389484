"""The recipe: every section together, its cross-section rules and its digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Self

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kiln_common.digests import file_sha256
from kiln_recipe.issues import Problem
from kiln_recipe.schema.base import (
    _NAME_RE,
    _VERSION_RE,
    SYSPREP_OPERATIONS,
    GiB,
    Model,
    PackageName,
    Sysprep,
    _base_dir,
    _no_repeats,
)
from kiln_recipe.schema.boot_test import TestSpec
from kiln_recipe.schema.checks import CheckEntry, CheckRequest, CheckSpec
from kiln_recipe.schema.content import FileSpec, RunStep
from kiln_recipe.schema.disk import Disk, OutputSpec
from kiln_recipe.schema.publish import Publish
from kiln_recipe.schema.repositories import MAX_REPOSITORIES, Repository
from kiln_recipe.schema.source import From


class Recipe(Model):
    name: str
    version: str
    from_: From = Field(alias="from")
    packages: list[PackageName] = []
    repositories: list[Repository] = []  # extra apt repositories for the packages step
    files: list[FileSpec] = []
    run: list[RunStep] = []
    disk: Disk = Field(default_factory=lambda: Disk(size=2 * GiB))
    outputs: list[OutputSpec] = Field(default_factory=lambda: [OutputSpec(format="qcow2")])
    sysprep: Sysprep = "default"
    checks: list[CheckEntry] = []
    test: TestSpec = Field(default_factory=TestSpec)
    publish: Publish = Field(default_factory=Publish)
    keep_workspace: bool = False  # debugging: keep a failed build's workspace
    # Where packages, files and run execute: bubblewrap on the image's root, or
    # a throwaway appliance VM with the image as a disk (docs/isolation.md).
    isolation: Literal["sandbox", "vm"] = "sandbox"

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError("expected 1-63 of a-z 0-9 -, starting with a letter")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f'write it in quotes, such as "1.2.0": YAML read the number {value}')
        if isinstance(value, str) and not _VERSION_RE.fullmatch(value):
            raise ValueError("expected 1-64 of A-Z a-z 0-9 . _ + -")
        return value

    @field_validator("files")
    @classmethod
    def _distinct_files(cls, files: list[FileSpec]) -> list[FileSpec]:
        paths = [f.path for f in files]
        for index, path in enumerate(paths):
            if path in paths[:index]:
                first = paths.index(path)
                raise Problem(f"{path} is written by files[{first}] too", index, "path")
        return files

    @field_validator("repositories")
    @classmethod
    def _few_repositories(cls, value: list[Repository]) -> list[Repository]:
        if len(value) > MAX_REPOSITORIES:
            raise ValueError(f"at most {MAX_REPOSITORIES} repositories")
        _no_repeats([r.uri for r in value], "repository")
        return value

    @field_validator("outputs")
    @classmethod
    def _distinct_outputs(cls, outputs: list[OutputSpec]) -> list[OutputSpec]:
        if not outputs:
            raise ValueError("name at least one output")
        _no_repeats([o.name for o in outputs], "output")
        return outputs

    @field_validator("sysprep")
    @classmethod
    def _distinct_ops(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            _no_repeats(value, "operation")
        return value

    @field_validator("checks")
    @classmethod
    def _distinct_checks(cls, checks: list[str | CheckSpec]) -> list[str | CheckSpec]:
        _no_repeats([c if isinstance(c, str) else c.profile for c in checks], "profile")
        return checks

    @model_validator(mode="after")
    def _base_keeps_its_layout(self) -> Self:
        # A customised image keeps the base's partitions, filesystem and bootloader;
        # only its size may change.
        if self.from_.image is not None and "disk" in self.model_fields_set:
            for name in ("filesystem", "partitioning", "boot"):
                if name in self.disk.model_fields_set:
                    raise Problem(
                        f"describes a from-scratch disk: a customised image keeps its base's"
                        f" {name} (only disk.size applies, to grow it)",
                        "disk",
                        name,
                    )
        return self

    @model_validator(mode="after")
    def _bind_base_dir(self, info: ValidationInfo) -> Self:
        self._base_dir = _base_dir(info)
        return self

    @property
    def base_dir(self) -> Path:
        """The directory of the recipe file: `source` and `script` are relative to it."""
        return self._base_dir

    def disk_size_given(self) -> int | None:
        """disk.size when the recipe sets it; a customised image otherwise keeps
        its base's size."""
        if "disk" in self.model_fields_set and "size" in self.disk.model_fields_set:
            return self.disk.size
        return None

    def sysprep_operations(self) -> tuple[str, ...]:
        """The sysprep operations to run, in their canonical order."""
        if self.sysprep == "default":
            return SYSPREP_OPERATIONS
        if self.sysprep == "none":
            return ()
        return tuple(op for op in SYSPREP_OPERATIONS if op in self.sysprep)

    def check_profiles(self) -> tuple[CheckRequest, ...]:
        """The requirement profiles to check, in the recipe's order."""
        return tuple(
            CheckRequest(c, False) if isinstance(c, str) else CheckRequest(c.profile, c.advisory)
            for c in self.checks
        )

    def digest(self) -> str:
        """SHA-256 of the recipe as canonical JSON, with the contents of its file
        sources and scripts folded in (editing a script changes it). Where the
        recipe lives, the debugging switch keep_workspace and isolation (both
        modes give the same image) do not count."""
        doc = self.model_dump(mode="json", by_alias=True, exclude={"keep_workspace", "isolation"})
        for index, spec in enumerate(self.files):
            if spec.source is not None:
                doc["files"][index]["source_sha256"] = file_sha256(self.base_dir / spec.source)
        for index, step in enumerate(self.run):
            if step.script is not None:
                doc["run"][index]["script_sha256"] = file_sha256(self.base_dir / step.script)
        for index, repo in enumerate(self.repositories):
            doc["repositories"][index]["key_sha256"] = file_sha256(self.base_dir / repo.key)
        # Fields added since a recipe's digest was first kept are left out while
        # unset: such a recipe keeps the digest (and idempotency keys, layer
        # keys, Glance recipe_sha256) it always had.
        if not self.repositories:
            del doc["repositories"]
        image = doc["from"].get("image")
        for added in ("checksums", "channel"):
            if image is not None and image.get(added) is None:
                del image[added]
        for target in (doc.get("publish") or {}).get("glance") or []:
            if target.get("channel") is None:
                del target["channel"]
        canonical = json.dumps(
            {"kiln-recipe": 1, "recipe": doc}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()
