"""The recipe's building blocks: limits, the literal kinds (distros, formats,
sysprep operations, check profiles), the value parsers and validated string
types the sections share, and Model, the frozen base of every section."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Tag,
    ValidationInfo,
)

from kiln_common.channels import NAME_RE
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

_NAME_RE = NAME_RE  # a recipe's name: channels are kept by it too
_VERSION_RE = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_RELEASE_RE = re.compile(r"[a-z][a-z0-9.-]{0,63}")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1
_MODE_RE = re.compile(r"[0-7]{3,4}")
_ACCOUNT_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_MARKETPLACE_RE = re.compile(r"[A-Za-z0-9_-]{27}")  # base64url of a SHA-1, as StratusLab
_CLOUD_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def cloud_name(value: str) -> str:
    """A cloud name of the publisher's clouds.yaml (a field validator)."""
    if not _CLOUD_RE.fullmatch(value):
        raise ValueError("expected a cloud name (1-64 of A-Z a-z 0-9 . _ -)")
    return value


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


class Model(BaseModel):
    """Frozen, and unknown fields are errors. A field with a YAML alias (`from`)
    is read by its alias from documents and by its name from Python."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_alias=True, validate_by_name=True
    )
    # Kiln's classes named Test* are not pytest test classes.
    __test__: ClassVar[bool] = False
