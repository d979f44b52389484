"""The recipe's `files:` and `run:` sections: what is written into the image and
what runs in it."""

from __future__ import annotations

from typing import Self

from pydantic import (
    ValidationInfo,
    field_validator,
    model_validator,
)

from kiln_recipe.schema.base import (
    _ACCOUNT_RE,
    _MODE_RE,
    Model,
    _beside_recipe,
    _exactly_one,
    _image_path,
    _non_blank,
)


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
