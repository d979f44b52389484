"""The recipe's schema: what a user writes to describe an image.

The schema lives here and only here, as frozen pydantic models; the loader
(kiln_recipe.loader) checks all of it before any privileged work starts. See
docs/recipe.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Literal, NamedTuple, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kiln_common.digests import file_sha256
from kiln_common.ids import ID_RE
from kiln_common.urls import http_target
from kiln_recipe.issues import Problem, describe

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MAX_RECIPE_BYTES = 1 * MiB
MIN_DISK, MAX_DISK = 512 * MiB, 2 * TiB
MIN_BOOT_TIMEOUT, MAX_BOOT_TIMEOUT = 10, 3600
DEFAULT_COMMAND_TIMEOUT = 120  # seconds each boot test command may run
MAX_TEST_COMMANDS = 100

Distro = Literal["debian", "ubuntu"]
Format = Literal["qcow2", "qcow2c", "raw", "vmdk", "ext3", "ext4", "tar"]
Compression = Literal["gz", "bz2", "xz", "zst"]
SysprepOp = Literal[
    "ssh-host-keys",
    "machine-id",
    "udev-persistent-net",
    "root-password",
    "logs",
    "shell-history",
    "apt-lists",
    "resolv-conf",
]
CheckProfile = Literal["tycoon", "stratuslab", "cloud"]

DISTROS: tuple[str, ...] = get_args(Distro)
FORMATS: tuple[str, ...] = get_args(Format)
COMPRESSIONS: tuple[str, ...] = get_args(Compression)
SYSPREP_OPERATIONS: tuple[str, ...] = get_args(SysprepOp)
CHECK_PROFILES: tuple[str, ...] = get_args(CheckProfile)
# qcow2 and vmdk compress inside the format; an outer layer would only stop
# tools from reading them in place.
INTERNALLY_COMPRESSED = frozenset({"qcow2", "qcow2c", "vmdk"})

_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,62}")
_VERSION_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_RELEASE_RE = re.compile(r"[a-z][a-z0-9.-]{0,63}")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
_MODE_RE = re.compile(r"[0-7]{3,4}")
_ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MARKETPLACE_RE = re.compile(r"[A-Za-z0-9_-]{27}")  # base64url of a SHA-1, as StratusLab
_CLOUD_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SIZE_RE = re.compile(r"(\d+)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "B": 1, "K": KiB, "KiB": KiB, "M": MiB, "MiB": MiB}
_SIZE_UNITS |= {"G": GiB, "GiB": GiB, "T": TiB, "TiB": TiB}
_DURATION_RE = re.compile(r"(\d+)\s*([smh]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


# --- value parsers shared by the models ---------------------------------------------------


def parse_size(value: object) -> int:
    """Bytes from an int or "4GiB", "512MiB", "2G", "2048M" (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a size such as 4GiB, 512MiB or 2G, got {describe(value)}")
    number, unit = match.groups()
    if unit.upper() in ("KB", "MB", "GB", "TB"):
        raise ValueError(f"{value!r} is ambiguous: write {number}{unit[0].upper()}iB")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown unit {unit!r}: use B, K/KiB, M/MiB, G/GiB or T/TiB")
    return int(number) * _SIZE_UNITS[unit]


def parse_seconds(value: object) -> int:
    """Seconds from an int or "300s", "5m", "1h"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _DURATION_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a duration such as 300s, 5m or 1h, got {describe(value)}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _http_url(value: str) -> str:
    try:
        http_target(value)  # what reaches apt, socat and QEMU is a plain host and port
    except ValueError as exc:
        raise ValueError(
            f"expected an http:// or https:// URL, got {value[:200]!r}: {exc}"
        ) from None
    return value


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return Path(context.get("base_dir") or Path.cwd())


def _beside_recipe(value: str, info: ValidationInfo) -> str:
    """A file the recipe names by a path relative to its own directory: it must
    exist, be a regular file, and stay inside that directory (through `..` or a
    symlink alike), so a recipe cannot read the build host's files."""
    if not value or Path(value).is_absolute():
        raise ValueError("expected a path relative to the recipe's directory")
    base = _base_dir(info).resolve()
    if os.path.normpath(value).split(os.sep)[0] == "..":
        raise ValueError(f"{value!r} goes outside the recipe's directory")
    target = (base / value).resolve()
    if not target.is_relative_to(base):
        raise ValueError(f"{value!r} leads outside the recipe's directory (through a symlink)")
    try:
        mode = target.stat().st_mode
    except OSError:
        raise ValueError(f"{value!r} does not exist in {base}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{value!r} is not a regular file")
    return value


def _image_path(value: str) -> str:
    """An absolute path inside the image, written in its one normal form."""
    if not value.startswith("/"):
        raise ValueError("expected an absolute path in the image, such as /etc/motd")
    if "\0" in value or ".." in value.split("/"):
        raise ValueError("must not contain '..' or NUL")
    normal = "/" + "/".join(p for p in value.split("/") if p not in ("", "."))
    if normal != value:
        raise ValueError(f"write it in normal form: {normal}")
    if value == "/":
        raise ValueError("names the root directory, not a file")
    return value


def _package_name(value: str) -> str:
    if not _PACKAGE_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a package name (a-z 0-9 + . -, at least 2)")
    return value


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _exactly_one(model: BaseModel, names: Sequence[str]) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) == 1:
        return
    choices = ", ".join(names)
    if not given:
        raise Problem(f"give exactly one of: {choices}")
    raise Problem(f"give exactly one of: {choices} (got {' and '.join(given)})", given[1])


def _no_repeats(values: Sequence[object], what: str) -> None:
    for index, value in enumerate(values):
        if value in values[:index]:
            raise Problem(f"{what} {value!r} is listed twice", index)


def _sysprep_kind(value: object) -> str:
    # Picks the branch up front so a wrong value gets one message, not one per branch.
    return "operations" if isinstance(value, list) else "preset"


def _check_kind(value: object) -> str:
    return "spec" if isinstance(value, dict | BaseModel) else "profile"


PackageName = Annotated[str, AfterValidator(_package_name)]
Command = Annotated[str, AfterValidator(_non_blank)]
Sysprep = Annotated[
    Annotated[Literal["default", "none"], Tag("preset")]
    | Annotated[list[SysprepOp], Tag("operations")],
    Discriminator(_sysprep_kind),
]


# --- the schema ---------------------------------------------------------------------------


class Model(BaseModel):
    """Frozen, and unknown fields are errors. A field with a YAML alias (`from`)
    is read by its alias from documents and by its name from Python."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_alias=True, validate_by_name=True
    )
    # Kiln's classes named Test* are not pytest test classes.
    __test__: ClassVar[bool] = False


class Bootstrap(Model):
    distro: Distro
    release: str
    arch: Literal["amd64"] = "amd64"
    mirror: str | None = None  # None: the builder's default mirror, else its apt source

    @field_validator("release")
    @classmethod
    def _release(cls, value: str) -> str:
        if not _RELEASE_RE.fullmatch(value):
            raise ValueError("expected a suite or codename such as bookworm, trixie or noble")
        return value

    @field_validator("mirror")
    @classmethod
    def _mirror(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @model_validator(mode="after")
    def _ubuntu_needs_mirror(self) -> Self:
        if self.distro == "ubuntu" and self.mirror is None:
            raise Problem(
                "required for ubuntu: the build host's apt sources are Debian's", "mirror"
            )
        return self


class GlanceRef(Model):
    cloud: str  # a cloud name in the publisher's clouds.yaml
    id: str

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, value: str) -> str:
        if not _CLOUD_RE.fullmatch(value):
            raise ValueError("expected a cloud name (1-64 of A-Z a-z 0-9 . _ -)")
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"expected a Glance image id (a UUID), got {value[:64]!r}") from None


class ImageRef(Model):
    url: str | None = None
    sha256: str | None = None
    artifact: str | None = None
    marketplace: str | None = None
    glance: GlanceRef | None = None

    SOURCES: ClassVar[tuple[str, ...]] = ("url", "artifact", "marketplace", "glance")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_RE.fullmatch(value.lower()):
            raise ValueError("expected 64 hex digits")
        return None if value is None else value.lower()

    @field_validator("artifact")
    @classmethod
    def _artifact(cls, value: str | None) -> str | None:
        if value is not None and not ID_RE.fullmatch(value):
            raise ValueError(f"{value[:64]!r} is not a Kiln artifact id")
        return value

    @field_validator("marketplace")
    @classmethod
    def _marketplace(cls, value: str | None) -> str | None:
        if value is not None and not _MARKETPLACE_RE.fullmatch(value):
            raise ValueError("expected a marketplace identifier (27 characters of base64url)")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        _exactly_one(self, self.SOURCES)
        # Only a URL needs a pin: the other sources carry their own checksums.
        if self.url is not None and self.sha256 is None:
            raise Problem("required with url, so the download is verified", "sha256")
        if self.url is None and self.sha256 is not None:
            raise Problem("only for url: other sources carry their own checksums", "sha256")
        return self


class From(Model):
    bootstrap: Bootstrap | None = None
    image: ImageRef | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("bootstrap", "image"))
        return self


class FileSpec(Model):
    path: str
    content: str | None = None
    source: str | None = None
    mode: str = "0644"
    owner: str = "root"
    group: str = "root"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _image_path(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _beside_recipe(value, info)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                'write it in quotes, such as "0644": YAML reads 0644 as the number 420'
            )
        if isinstance(value, str) and not _MODE_RE.fullmatch(value):
            raise ValueError("expected 3 or 4 octal digits, such as 0644 or 0755")
        return value

    @field_validator("owner", "group")
    @classmethod
    def _account(cls, value: str) -> str:
        if not _ACCOUNT_RE.fullmatch(value):
            raise ValueError(f"{value[:64]!r} is not a user or group name or number")
        return value

    @model_validator(mode="after")
    def _one_body(self) -> Self:
        _exactly_one(self, ("content", "source"))
        return self


class RunStep(Model):
    script: str | None = None  # runs inside the image, never on the build host
    inline: str | None = None

    @field_validator("script")
    @classmethod
    def _script(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _beside_recipe(value, info)

    @field_validator("inline")
    @classmethod
    def _inline(cls, value: str | None) -> str | None:
        return None if value is None else _non_blank(value)

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("script", "inline"))
        return self


class CheckSpec(Model):
    """A requirement profile with options: `{profile: tycoon, advisory: true}`."""

    profile: CheckProfile
    advisory: bool = False  # failed rules are reported but do not fail the build


class CheckRequest(NamedTuple):
    """One profile to check, normalised from either way of writing it."""

    profile: str
    advisory: bool


CheckEntry = Annotated[
    Annotated[CheckProfile, Tag("profile")] | Annotated[CheckSpec, Tag("spec")],
    Discriminator(_check_kind),
]


class Disk(Model):
    size: int
    filesystem: Literal["ext4", "ext3", "xfs"] = "ext4"
    partitioning: Literal["gpt", "mbr"] = "gpt"
    boot: Literal["bios"] = "bios"

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: object) -> int:
        size = parse_size(value)
        if not MIN_DISK <= size <= MAX_DISK:
            raise ValueError(f"{value} is out of range: from 512MiB to 2TiB")
        if size % 512:
            raise ValueError(f"{value} is not a whole number of 512-byte sectors")
        return size


class OutputSpec(Model):
    """One output file, written in recipes as FORMAT[.COMPRESSION] ("raw.xz")."""

    format: Format
    compression: Compression | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        fmt, dot, compression = value.partition(".")
        if fmt not in FORMATS:
            raise ValueError(
                f"unknown format {fmt!r}: expected FORMAT[.COMPRESSION] with FORMAT one of "
                + ", ".join(FORMATS)
            )
        if dot and compression not in COMPRESSIONS:
            raise ValueError(
                f"unknown compression {compression!r}: expected one of " + ", ".join(COMPRESSIONS)
            )
        return {"format": fmt, "compression": compression or None}

    @model_validator(mode="after")
    def _outer_compression(self) -> Self:
        if self.compression is not None and self.format in INTERNALLY_COMPRESSED:
            hint = " (use qcow2c for a compressed qcow2)" if self.format == "qcow2" else ""
            raise ValueError(f"{self.format} takes no outer compression{hint}")
        return self

    @property
    def name(self) -> str:
        return f"{self.format}.{self.compression}" if self.compression else self.format


class BootTest(Model):
    timeout: int = 300  # seconds

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: object) -> int:
        seconds = parse_seconds(value)
        if not MIN_BOOT_TIMEOUT <= seconds <= MAX_BOOT_TIMEOUT:
            raise ValueError(f"{value} is out of range: from 10s to 1h")
        return seconds


class TestSpec(Model):
    boot: BootTest | None = Field(default_factory=BootTest)
    commands: list[Command] = Field(default=[], max_length=MAX_TEST_COMMANDS)
    command_timeout: int = DEFAULT_COMMAND_TIMEOUT  # seconds, for each command

    @field_validator("command_timeout", mode="before")
    @classmethod
    def _command_timeout(cls, value: object) -> int:
        seconds = parse_seconds(value)
        if not 1 <= seconds <= MAX_BOOT_TIMEOUT:
            raise ValueError(f"{value} is out of range: from 1s to 1h")
        return seconds

    @field_validator("boot", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        # `boot: false` turns the boot test off; `boot: true` keeps the defaults.
        if isinstance(value, bool):
            return {} if value else None
        return value

    @model_validator(mode="after")
    def _commands_need_boot(self) -> Self:
        if self.commands and self.boot is None:
            raise Problem("commands run in the booted image: they need the boot test", "commands")
        return self


_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_VALID_FOR_RE = re.compile(r"(\d+)\s*(h|d|w)")
_VALID_FOR_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}
MAX_VALID_FOR = 5 * 365 * 86400
Visibility = Literal["private", "shared", "community", "public"]
RetireAction = Literal["hide", "deactivate", "delete"]


class GlancePublish(Model):
    """One Glance target of `publish.glance` (docs/recipe.md#publish)."""

    cloud: str
    region: str | None = None
    name: str | None = None
    visibility: Visibility = "private"
    tags: list[str] = []
    properties: dict[str, str] = {}
    min_disk: int = Field(default=0, ge=0)
    min_ram: int = Field(default=0, ge=0)
    keep: int = Field(default=0, ge=0, le=1000)
    retire: RetireAction = "hide"

    @field_validator("cloud")
    @classmethod
    def _cloud(cls, value: str) -> str:
        if not _CLOUD_RE.fullmatch(value):
            raise ValueError("expected a cloud name (1-64 of A-Z a-z 0-9 . _ -)")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value) <= 255:
            raise ValueError("expected an image name of 1-255 characters")
        return value


class MarketplacePublish(Model):
    """`publish.marketplace`: an entry signed by the endorser."""

    endorser: str | None = None  # default: the publisher's default endorser
    valid_for: int | None = None  # seconds; default: six months
    title: str = ""
    description: str = ""

    @field_validator("endorser")
    @classmethod
    def _endorser(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL_RE.fullmatch(value):
            raise ValueError(f"expected an e-mail address, got {value[:64]!r}")
        return value

    @field_validator("valid_for", mode="before")
    @classmethod
    def _valid_for(cls, value: object) -> object:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            seconds = value
        else:
            match = _VALID_FOR_RE.fullmatch(value.strip()) if isinstance(value, str) else None
            if match is None:
                raise ValueError(
                    f"expected a duration such as 12h, 180d or 26w, got {describe(value)}"
                )
            seconds = int(match.group(1)) * _VALID_FOR_UNITS[match.group(2)]
        if not 3600 <= seconds <= MAX_VALID_FOR:
            raise ValueError("out of range: from 1h to 5 years")
        return seconds


class Publish(Model):
    """Where a built image goes: Glance clouds and the marketplace. The
    publisher acts on it once the build has succeeded (docs/publisher.md)."""

    glance: list[GlancePublish] = []
    marketplace: MarketplacePublish | None = None

    @field_validator("glance", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        # `glance: mycloud` is one target with the defaults; a mapping is one target.
        if isinstance(value, str):
            return [{"cloud": value}]
        if isinstance(value, dict):
            return [value]
        return value

    @field_validator("marketplace", mode="before")
    @classmethod
    def _on(cls, value: object) -> object:
        # `marketplace: true` publishes with the publisher's defaults.
        if isinstance(value, bool):
            return {} if value else None
        return value

    @field_validator("glance")
    @classmethod
    def _distinct(cls, targets: list[GlancePublish]) -> list[GlancePublish]:
        seen = [(t.cloud, t.region, t.name) for t in targets]
        for index, key in enumerate(seen):
            if key in seen[:index]:
                raise Problem("the same cloud, region and name twice", index, "cloud")
        return targets

    @property
    def targets(self) -> bool:
        return bool(self.glance) or self.marketplace is not None


class Recipe(Model):
    name: str
    version: str
    from_: From = Field(alias="from")
    packages: list[PackageName] = []
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
        canonical = json.dumps(
            {"kiln-recipe": 1, "recipe": doc}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()
