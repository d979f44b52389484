"""The recipe's `from:` section: a bootstrap (distro, release, mirror) or an
existing image (a URL, a storage artifact, a Glance image or a marketplace entry)."""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal, Self

from pydantic import (
    field_validator,
    model_validator,
)

from kiln_common.channels import check_channel, check_name
from kiln_common.errors import InvalidArgument
from kiln_common.ids import ID_RE
from kiln_recipe.issues import Problem
from kiln_recipe.schema.base import (
    _MARKETPLACE_RE,
    _RELEASE_RE,
    _SHA256_RE,
    Distro,
    Model,
    _exactly_one,
    _http_url,
    cloud_name,
)


class Bootstrap(Model):
    distro: Distro
    release: str
    arch: Literal["amd64"] = "amd64"
    mirror: str | None = None  # None: the builder's default mirror, else its apt source

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
            raise Problem(
                "required for ubuntu: the build host's apt sources are Debian's", "mirror"
            )
        return self


class GlanceRef(Model):
    cloud: str  # a cloud name in the publisher's clouds.yaml
    id: str

    _cloud = field_validator("cloud")(cloud_name)

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
    # Instead of sha256: the URL of a checksum file (SHA256SUMS, SHA512SUMS) as a
    # distribution publishes beside its images, so the base follows its release.
    checksums: str | None = None
    artifact: str | None = None
    marketplace: str | None = None
    glance: GlanceRef | None = None
    # NAME/CHANNEL: the build another recipe's channel points at (the tenant's own).
    channel: str | None = None

    SOURCES: ClassVar[tuple[str, ...]] = ("url", "artifact", "marketplace", "glance", "channel")

    @field_validator("url", "checksums")
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

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name, slash, channel = value.partition("/")
        if not slash:
            raise ValueError("expected NAME/CHANNEL: a recipe's name and one of its channels")
        try:
            check_name(name)
            check_channel(channel)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None
        return value

    def channel_ref(self) -> tuple[str, str]:
        """(recipe name, channel) of a channel base."""
        assert self.channel is not None
        name, _, channel = self.channel.partition("/")
        return name, channel

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        _exactly_one(self, self.SOURCES)
        # Only a URL needs a pin: the other sources carry their own checksums.
        if self.url is not None and (self.sha256 is None) == (self.checksums is None):
            raise Problem(
                "give one with url, so the download is verified: sha256 (a fixed image),"
                " or checksums (the URL of a SHA256SUMS or SHA512SUMS file: the release's)",
                "sha256",
            )
        for pin in ("sha256", "checksums"):
            if self.url is None and getattr(self, pin) is not None:
                raise Problem("only for url: other sources carry their own checksums", pin)
        return self


class From(Model):
    bootstrap: Bootstrap | None = None
    image: ImageRef | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        _exactly_one(self, ("bootstrap", "image"))
        return self
