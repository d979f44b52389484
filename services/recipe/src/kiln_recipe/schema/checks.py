"""The recipe's `checks:` section: requirement profiles, plain or with options."""

from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import (
    Discriminator,
    Tag,
)

from kiln_recipe.schema.base import CheckProfile, Model, _check_kind


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
