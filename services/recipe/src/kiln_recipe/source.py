"""A recipe as it travels: its text (or the same document as a structure) and
the files it names by relative path; and what checking one found. Plain
dataclasses: kiln_client.wire makes the Builder API's messages of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecipeSource:
    yaml: str | None = None  # the recipe's text
    structured: dict[str, Any] | None = None  # or the same document as a structure
    files: dict[str, bytes] = field(default_factory=dict)  # by the path the recipe names
    filename: str = ""  # named in error messages


@dataclass(frozen=True)
class RecipeProblem:
    field: str  # the field path, as name.of.field[0]
    line: int  # 0 when unknown
    message: str


@dataclass(frozen=True)
class Validation:
    """What the builder's checks made of a recipe."""

    valid: bool
    problems: list[RecipeProblem] = field(default_factory=list)
    name: str = ""
    version: str = ""
    digest: str = ""
