"""The recipe's `repositories:`: extra apt repositories (internal ones, most
often) that the packages step installs from, beside the distro's mirror. Each
names its suites and components and the key its Release files are signed with
(a file beside the recipe: apt's `Signed-By`), so a repository is never
trusted without a signature."""

from __future__ import annotations

import re

from pydantic import ValidationInfo, field_validator

from kiln_recipe.schema.base import Model, _beside_recipe, _http_url, _no_repeats

_SUITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}")
_COMPONENT_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_REPOSITORIES = 8
MAX_SUITES = 8  # each is a Release file the fingerprint reads before the build
MAX_COMPONENTS = 16


class Repository(Model):
    uri: str  # http:// or https://, as apt's URIs
    suites: list[str]
    components: list[str] = ["main"]
    key: str  # a file beside the recipe: the signing key (ASCII-armoured or binary)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError("a URI has no spaces or control characters")  # one line of apt's
        if "?" in value or "#" in value:
            raise ValueError("expected the repository's base URL, without a query or fragment")
        return _http_url(value).rstrip("/")

    @field_validator("suites")
    @classmethod
    def _suites(cls, value: list[str]) -> list[str]:
        if not value or len(value) > MAX_SUITES:
            raise ValueError(f"name 1 to {MAX_SUITES} suites, such as bookworm")
        for suite in value:
            if not _SUITE_RE.fullmatch(suite) or ".." in suite.split("/"):
                raise ValueError(f"{suite[:64]!r} is not a suite name such as bookworm")
        _no_repeats(value, "suite")
        return value

    @field_validator("components")
    @classmethod
    def _components(cls, value: list[str]) -> list[str]:
        if not value or len(value) > MAX_COMPONENTS:
            raise ValueError(f"name 1 to {MAX_COMPONENTS} components, such as main")
        for component in value:
            if not _COMPONENT_RE.fullmatch(component):
                raise ValueError(f"{component[:64]!r} is not a component name such as main")
        _no_repeats(value, "component")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str, info: ValidationInfo) -> str:
        return _beside_recipe(value, info)
