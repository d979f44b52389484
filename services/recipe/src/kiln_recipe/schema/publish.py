"""The recipe's `publish:` section: Glance targets and the marketplace entry
published when the build succeeds."""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from kiln_common.channels import check_channel
from kiln_common.errors import InvalidArgument
from kiln_recipe.issues import Problem, describe
from kiln_recipe.schema.base import Model, cloud_name

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
    # Follow a channel: the image under `name` is always the build the
    # channel points at, published when the channel moves, not on success.
    channel: str | None = None

    _cloud = field_validator("cloud")(cloud_name)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        try:
            return None if value is None else check_channel(value)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.channel is not None and self.name is None:
            raise Problem("a channel-following target needs a name: the one it keeps", "name")
        return self

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
