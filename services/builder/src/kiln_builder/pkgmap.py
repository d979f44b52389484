"""Distro-neutral package names mapped per distro (like diskimage-builder's
pkg-map). The table is pkgmap.yaml beside this module. It is checked when first
loaded, so a bad edit fails the first test that maps a package, not a build."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from importlib import resources

from kiln_common.errors import InvalidArgument
from kiln_recipe import RecipeError, load_yaml_document
from kiln_recipe.schema import DISTROS

DEFAULT = "default"  # the packages for every distro an entry does not name
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.-]+")  # Debian policy 5.6.1, as recipes use

PkgMap = Mapping[str, Mapping[str, tuple[str, ...]]]


class PkgMapError(Exception):
    """The table itself is wrong: a bug in Kiln, not in a recipe."""


def map_packages(names: Iterable[str], distro: str, table: PkgMap | None = None) -> list[str]:
    """The distro's package names for `names`, sorted and without repeats.
    A name the table does not list passes through unchanged."""
    if distro not in DISTROS:
        raise InvalidArgument(f"unknown distro {distro!r}: expected one of {', '.join(DISTROS)}")
    table = pkgmap() if table is None else table
    out: set[str] = set()
    for name in names:
        entry = table.get(name)
        out.update(entry[distro] if entry is not None else (name,))
    return sorted(out)


@functools.cache
def pkgmap() -> PkgMap:
    """The table shipped with Kiln, read and checked once."""
    text = resources.files("kiln_builder").joinpath("pkgmap.yaml").read_text(encoding="utf-8")
    return parse_pkgmap(text, "pkgmap.yaml")


def parse_pkgmap(text: str, filename: str = "<pkgmap>") -> PkgMap:
    """Checks a table and expands `default`, so every entry names every distro."""
    try:
        data, _ = load_yaml_document(text, filename)
    except RecipeError as exc:
        raise PkgMapError(f"{filename}: {exc}") from None
    if not isinstance(data, dict):
        raise PkgMapError(f"{filename}: expected a mapping of neutral names")
    problems: list[str] = []
    table = {str(name): _entry(name, spec, problems) for name, spec in data.items()}
    if problems:
        raise PkgMapError("\n".join(f"{filename}: {p}" for p in problems))
    return table


def _entry(name: object, spec: object, problems: list[str]) -> dict[str, tuple[str, ...]]:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        problems.append(f"{name!r} is not a package name")
    if not isinstance(spec, dict):
        problems.append(f"{name}: expected a mapping of distro to package list")
        return {}
    for key in spec.keys() - {DEFAULT, *DISTROS}:
        problems.append(f"{name}: unknown distro {key!r}")
    for key, packages in spec.items():
        valid = isinstance(packages, list) and packages
        if not valid or not all(isinstance(p, str) and _NAME_RE.fullmatch(p) for p in packages):
            problems.append(f"{name}.{key}: expected a non-empty list of package names")
    entry: dict[str, tuple[str, ...]] = {}
    for distro in DISTROS:
        packages = spec.get(distro, spec.get(DEFAULT))
        if packages is None:
            problems.append(f"{name}: no packages for {distro} (and no {DEFAULT})")
        entry[distro] = tuple(packages) if isinstance(packages, list) else ()
    return entry
