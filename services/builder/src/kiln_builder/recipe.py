"""The recipe: what a user writes to describe an image.

The schema lives here and only here, as frozen pydantic models. The loader
checks all of it (YAML syntax, duplicate keys, types, ranges, cross-field
rules, and the files a recipe names beside itself) before any privileged work
starts, and reports every problem as a `RecipeIssue` naming the field path
(`files[2].mode`) and the YAML line. See docs/recipe.md.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
import uuid
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Self, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from kiln_common.digests import file_sha256
from kiln_common.errors import InvalidArgument
from kiln_common.ids import ID_RE

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MAX_RECIPE_BYTES = 1 * MiB
MIN_DISK, MAX_DISK = 512 * MiB, 2 * TiB
MIN_BOOT_TIMEOUT, MAX_BOOT_TIMEOUT = 10, 3600
# A 1 MiB document cannot hold this many nodes unless aliases multiply them:
# the cap stops "billion laughs" and self-referencing aliases.
_MAX_NODES = 1_000_000
# PyYAML's composer recurses, so no parsed document nests deeper than this;
# only a recursive alias does.
_MAX_DEPTH = 1000

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


# --- issues and errors --------------------------------------------------------------------


class RecipeIssue(NamedTuple):
    """One problem: `path` like "disk.size" or "files[2].mode" ("" for the whole
    document), `line` 1-based in the YAML (None when there is no document)."""

    path: str
    line: int | None
    message: str

    def render(self, filename: str = "") -> str:
        """`FILE:LINE: path: message`, leaving out the parts that are unknown."""
        where = filename
        if self.line is not None:
            where = f"{where}:{self.line}" if where else str(self.line)
        return ": ".join([p for p in (where, self.path) if p] + [self.message])


class RecipeError(InvalidArgument):
    """A recipe is invalid. `issues` holds every problem found, by line; str()
    lists them one per line as "LINE: path: message"."""

    def __init__(self, issues: Sequence[RecipeIssue], filename: str = "<recipe>") -> None:
        self.issues = sorted(set(issues), key=lambda i: (i.line or 0, i.path, i.message))
        self.filename = filename
        super().__init__("\n".join(issue.render() for issue in self.issues))


class _Problem(ValueError):
    """A validation failure about one part of the value being validated (an
    item, a sub-field), so the issue points at that part's path and line."""

    def __init__(self, message: str, *at: str | int) -> None:
        super().__init__(message)
        self.at = at


# --- value parsers shared by the models ---------------------------------------------------


def parse_size(value: object) -> int:
    """Bytes from an int or "4GiB", "512MiB", "2G", "2048M" (binary units)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE_RE.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a size such as 4GiB, 512MiB or 2G, got {_describe(value)}")
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
        raise ValueError(f"expected a duration such as 300s, 5m or 1h, got {_describe(value)}")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise ValueError(f"expected an http:// or https:// URL, got {value[:200]!r}")
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
        raise _Problem(f"give exactly one of: {choices}")
    raise _Problem(f"give exactly one of: {choices} (got {' and '.join(given)})", given[1])


def _no_repeats(values: Sequence[object], what: str) -> None:
    for index, value in enumerate(values):
        if value in values[:index]:
            raise _Problem(f"{what} {value!r} is listed twice", index)


def _sysprep_kind(value: object) -> str:
    # Picks the branch up front so a wrong value gets one message, not one per branch.
    return "operations" if isinstance(value, list) else "preset"


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
    mirror: str | None = None  # None: the build host's apt source

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
            raise _Problem(
                "required for ubuntu: the build host's apt sources are Debian's", "mirror"
            )
        return self


class GlanceRef(Model):
    cloud: str  # a cloud name in the builder's clouds.yaml
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
            raise _Problem("required with url, so the download is verified", "sha256")
        if self.url is None and self.sha256 is not None:
            raise _Problem("only for url: other sources carry their own checksums", "sha256")
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
    commands: list[Command] = []

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
            raise _Problem("commands run in the booted image: they need the boot test", "commands")
        return self


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
    checks: list[CheckProfile] = []
    test: TestSpec = Field(default_factory=TestSpec)
    publish: dict[str, Any] = {}  # validated by the publisher
    keep_workspace: bool = False  # debugging: keep a failed build's workspace

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
                raise _Problem(f"{path} is written by files[{first}] too", index, "path")
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
    def _distinct_checks(cls, checks: list[str]) -> list[str]:
        _no_repeats(checks, "profile")
        return checks

    @model_validator(mode="after")
    def _bind_base_dir(self, info: ValidationInfo) -> Self:
        self._base_dir = _base_dir(info)
        return self

    @property
    def base_dir(self) -> Path:
        """The directory of the recipe file: `source` and `script` are relative to it."""
        return self._base_dir

    def sysprep_operations(self) -> tuple[str, ...]:
        """The sysprep operations to run, in their canonical order."""
        if self.sysprep == "default":
            return SYSPREP_OPERATIONS
        if self.sysprep == "none":
            return ()
        return tuple(op for op in SYSPREP_OPERATIONS if op in self.sysprep)

    def digest(self) -> str:
        """SHA-256 of the recipe as canonical JSON, with the contents of its file
        sources and scripts folded in (editing a script changes it). Where the
        recipe lives and the debugging switch keep_workspace do not count."""
        doc = self.model_dump(mode="json", by_alias=True, exclude={"keep_workspace"})
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


# --- loading ------------------------------------------------------------------------------


def load_recipe(path: Path) -> Recipe:
    """Reads and checks a recipe file. Raises RecipeError listing every problem."""
    filename = str(path)
    try:
        # Checked before opening too: opening a FIFO would wait for a writer.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise RecipeError([RecipeIssue("", None, "not a regular file")], filename)
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
        raise RecipeError([RecipeIssue("", None, problem)], filename) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError([RecipeIssue("", None, "larger than 1 MiB")], filename)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text (byte {exc.start})"
        raise RecipeError([RecipeIssue("", None, problem)], filename) from None
    return parse_recipe(text, Path(path).absolute().parent, filename)


def parse_recipe(text: str, base_dir: Path, filename: str = "<recipe>") -> Recipe:
    """Checks a recipe's text; `source` and `script` paths are relative to base_dir."""
    if len(text.encode(errors="surrogatepass")) > MAX_RECIPE_BYTES:
        raise RecipeError([RecipeIssue("", None, "larger than 1 MiB")], filename)
    data, root = load_yaml_document(text, filename)
    if not isinstance(data, dict) or root is None:
        line = None if root is None else root.start_mark.line + 1
        found = "an empty document" if root is None else _describe(data)
        problem = f"expected a mapping of fields (name, version, from, ...), found {found}"
        raise RecipeError([RecipeIssue("", line, problem)], filename)
    context = {"base_dir": Path(base_dir).absolute()}
    try:
        return Recipe.model_validate(data, context=context, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise RecipeError([_issue(e, root) for e in exc.errors()], filename) from None


def load_yaml_document(text: str, filename: str = "<yaml>") -> tuple[object, yaml.Node | None]:
    """One YAML document, parsed safely, as (data, node tree). Syntax errors,
    duplicate keys and alias bombs are a RecipeError with their lines."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        problems = _structure_issues(root)
        if problems:
            raise RecipeError(problems, filename)
        return loader.construct_document(root), root
    except yaml.MarkedYAMLError as exc:
        raise RecipeError([_syntax_issue(exc)], filename) from None
    except yaml.YAMLError as exc:
        raise RecipeError([RecipeIssue("", None, f"invalid YAML: {exc}")], filename) from None
    except RecursionError:
        raise RecipeError([RecipeIssue("", None, "nested too deeply")], filename) from None
    finally:
        loader.dispose()


def _syntax_issue(exc: yaml.MarkedYAMLError) -> RecipeIssue:
    mark = exc.problem_mark or exc.context_mark
    context, problem = exc.context or "", exc.problem or ""
    if context.startswith("while") and exc.context_mark is not None:
        message = f"{problem} ({context} on line {exc.context_mark.line + 1})"
    else:
        message = ", ".join(p for p in (context, problem) if p)
    return RecipeIssue("", None if mark is None else mark.line + 1, f"invalid YAML: {message}")


# A path in the document as a linked list (parent, part): O(1) to extend, so
# walking a deeply aliased document stays linear.
_Trail = tuple["_Trail", str | int] | None


def _structure_issues(root: yaml.Node) -> list[RecipeIssue]:
    """Duplicate keys (which YAML loaders otherwise drop silently), and aliases
    that nest without end or expand beyond _MAX_NODES. Walks iteratively:
    aliases share nodes, so the walk sees what construction would build."""
    issues: list[RecipeIssue] = []
    stack: list[tuple[yaml.Node, _Trail, int]] = [(root, None, 0)]
    seen = 0
    while stack:
        node, trail, depth = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            return [RecipeIssue("", None, "aliases expand to too many nodes")]
        if depth > _MAX_DEPTH:
            return [RecipeIssue("", None, "nested too deeply (a recursive alias?)")]
        if isinstance(node, yaml.MappingNode):
            issues += _duplicate_keys(node, trail)
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, (trail, name), depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, (trail, i), depth + 1) for i, item in enumerate(node.value)]
    return issues


def _duplicate_keys(node: yaml.MappingNode, trail: _Trail) -> list[RecipeIssue]:
    issues: list[RecipeIssue] = []
    first_line: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first_line:
            path = _format_path([*_unwind(trail), key.value])
            problem = (
                f"duplicate key {key.value!r} (first on line {first_line[key.tag, key.value]})"
            )
            issues.append(RecipeIssue(path, line, problem))
        else:
            first_line[key.tag, key.value] = line
    return issues


def _unwind(trail: _Trail) -> list[str | int]:
    parts: list[str | int] = []
    while trail is not None:
        trail, part = trail
        parts.append(part)
    return parts[::-1]


def _format_path(parts: Sequence[str | int]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


# --- pydantic errors as issues ------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _issue(error: ErrorDetails, root: yaml.Node) -> RecipeIssue:
    loc = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    # Parts of loc the document need not contain: a missing field, or the part
    # a _Problem points at. Anything else absent from it is a pydantic union tag.
    keep_from = len(loc) - 1 if error["type"] == "missing" else len(loc)
    if isinstance(cause, _Problem):
        loc += cause.at
    path, line = _locate(root, loc, keep_from)
    return RecipeIssue(path, line, _message(error, loc, cause))


def _locate(root: yaml.Node, loc: tuple[int | str, ...], keep_from: int) -> tuple[str, int]:
    """The field path and line of `loc`: the deepest node the document has
    (a mapping entry's key line, a list item's first line)."""
    node, line, parts = root, root.start_mark.line + 1, []
    for index, part in enumerate(loc):
        child = _child(node, part)
        if child is not None:
            node, line = child
            parts.append(part)
        elif index >= keep_from:
            parts.append(part)
    return _format_path(parts), line


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node, int] | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        # The last match: after a merge (<<) the explicit key comes last and wins.
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return value, key.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line + 1
    return None


def _message(error: ErrorDetails, loc: tuple[int | str, ...], cause: object) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        return _unknown_field(loc)
    if kind == "literal_error":
        return f"must be {error.get('ctx', {}).get('expected')}, not {_describe(value)}"
    if kind in _EXPECTED:
        quote = kind == "string_type" and isinstance(value, int | float | bool | date)
        return f"expected {_EXPECTED[kind]}, got {_describe(value)}" + (
            " (put it in quotes)" if quote else ""
        )
    if isinstance(cause, ValueError):
        return str(cause)
    return error["msg"]


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    name, known = str(loc[-1]), _known_fields(loc[:-1])
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(known)
    return f"unknown field {name!r} ({hint})" if known else f"unknown field {name!r}"


def _known_fields(loc: tuple[int | str, ...]) -> list[str]:
    """The field names (by alias) of the model at `loc` in a Recipe."""
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        model = _model_in(fields[part].annotation) if part in fields else None
    return [] if model is None else [f.alias or n for n, f in model.model_fields.items()]


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, date):
        return f"the date {value}"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else type(value).__name__
