"""Loading a recipe: read it (size, encoding, a regular file), parse the
YAML with its lines (kiln_recipe.yamldoc), validate it against the schema,
and turn every pydantic error into a RecipeIssue with field path and line."""

from __future__ import annotations

import difflib
import os
import stat
from datetime import date
from pathlib import Path
from typing import get_args

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kiln_recipe.issues import Problem, RecipeError, RecipeIssue, describe
from kiln_recipe.schema import MAX_RECIPE_BYTES, Recipe
from kiln_recipe.yamldoc import load_yaml_document, locate

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
        found = "an empty document" if root is None else describe(data)
        problem = f"expected a mapping of fields (name, version, from, ...), found {found}"
        raise RecipeError([RecipeIssue("", line, problem)], filename)
    context = {"base_dir": Path(base_dir).absolute()}
    try:
        return Recipe.model_validate(data, context=context, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise RecipeError([_issue(e, root) for e in exc.errors()], filename) from None


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
    if isinstance(cause, Problem):
        loc += cause.at
    path, line = locate(root, loc, keep_from)
    return RecipeIssue(path, line, _message(error, loc, cause))


def _message(error: ErrorDetails, loc: tuple[int | str, ...], cause: object) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        return _unknown_field(loc)
    if kind == "literal_error":
        return f"must be {error.get('ctx', {}).get('expected')}, not {describe(value)}"
    if kind in _EXPECTED:
        quote = kind == "string_type" and isinstance(value, int | float | bool | date)
        return f"expected {_EXPECTED[kind]}, got {describe(value)}" + (
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
        if part in fields:
            model = _model_in(fields[part].annotation)
        # else: a union's tag (checks[0] is a profile name or a mapping), not a field
    return [] if model is None else [f.alias or n for n, f in model.model_fields.items()]


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
