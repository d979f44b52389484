"""A submitted recipe: its text (or structure) and the files it names by
relative path, checked the same way a recipe file on disk is."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from kiln_recipe import Recipe, RecipeError, RecipeIssue, parse_recipe
from kiln_recipe.source import RecipeProblem, RecipeSource

MAX_FILES = 256
MAX_FILES_BYTES = 6 * 1024 * 1024  # under the gRPC message limit, with room for the rest
RECIPE_NAME = "recipe.yaml"  # what the materialised recipe is called


def _integral(value: Any) -> Any:
    """A Struct holds every number as a double: give whole ones back as ints,
    so `size: 4294967296` means what it says."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def recipe_text(source: RecipeSource) -> str:
    if source.yaml is not None:
        return source.yaml
    if source.structured is not None:
        doc = _integral(source.structured)
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    raise RecipeError(
        [RecipeIssue("", None, "no recipe given (yaml or structured)")], _filename(source)
    )


def _filename(source: RecipeSource) -> str:
    return source.filename or "<recipe>"


def _file_error(name: str, problem: str) -> RecipeError:
    return RecipeError([RecipeIssue("", None, f"attached file {name[:100]!r}: {problem}")])


def _relative(name: str) -> PurePosixPath:
    """A file key must be a plain relative path that stays in the bundle."""
    path = PurePosixPath(name)
    if (
        not name
        or "\0" in name
        or path.is_absolute()
        or ".." in path.parts
        or not path.parts  # "." names the directory itself
    ):
        raise _file_error(name, "expected a relative path inside the recipe's directory")
    if path == PurePosixPath(RECIPE_NAME):
        raise _file_error(name, "the recipe itself is kept under this name; rename the file")
    return path


def _check_sizes(source: RecipeSource) -> None:
    total = sum(len(data) for data in source.files.values())
    if len(source.files) > MAX_FILES or total > MAX_FILES_BYTES:
        raise RecipeError(
            [
                RecipeIssue(
                    "",
                    None,
                    f"attached files: at most {MAX_FILES} files "
                    f"and {MAX_FILES_BYTES >> 20} MiB in all",
                )
            ]
        )


def materialise(source: RecipeSource, directory: Path) -> Path:
    """Writes the recipe and its files into directory; returns the recipe's path."""
    _check_sizes(source)
    text = recipe_text(source)
    for name, data in sorted(source.files.items()):
        target = directory / _relative(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:  # a name too long, a file where a directory must be
            raise _file_error(name, f"cannot be stored ({exc.strerror or exc})") from None
        os.chmod(target, 0o644)
    recipe = directory / RECIPE_NAME
    recipe.write_text(text)
    return recipe


def load(source: RecipeSource, directory: Path) -> Recipe:
    """The checked recipe, its files materialised in directory (kept)."""
    recipe_path = materialise(source, directory)
    return parse_recipe(recipe_path.read_text(), directory, _filename(source))


def check(source: RecipeSource) -> tuple[Recipe, str]:
    """The checked recipe and its digest, worked out in a scratch directory
    that is removed afterwards (the digest reads the attached files)."""
    with tempfile.TemporaryDirectory(prefix="kiln-recipe-") as scratch:
        recipe = load(source, Path(scratch))
        return recipe, recipe.digest()


def problems(error: RecipeError) -> list[RecipeProblem]:
    return [
        RecipeProblem(field=issue.path, line=issue.line or 0, message=issue.message)
        for issue in error.issues
    ]


def normalised(source: RecipeSource) -> RecipeSource:
    """The form a build keeps: YAML text, whatever was submitted."""
    return RecipeSource(
        yaml=recipe_text(source), files=dict(source.files), filename=source.filename
    )
