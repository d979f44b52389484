"""A recipe's problems: each names its field path and YAML line."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import NamedTuple

from kiln_common.errors import InvalidArgument


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


class Problem(ValueError):
    """A validation failure about one part of the value being validated (an
    item, a sub-field), so the issue points at that part's path and line."""

    def __init__(self, message: str, *at: str | int) -> None:
        super().__init__(message)
        self.at = at


def describe(value: object) -> str:
    """A value as a message names it: the number 3, a list, 'abc'."""
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
