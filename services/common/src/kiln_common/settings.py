"""Typed settings: one class per service, read from the environment and an
optional YAML file named by <PREFIX>CONFIG_FILE. Environment wins over the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from kiln_common.auth.quotas import Quota
from kiln_common.logs import redact


class KilnSettings(BaseSettings):
    """Base for each service's settings. Subclasses set env_prefix."""

    model_config: ClassVar[SettingsConfigDict] = SettingsConfigDict(extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        prefix = str(settings_cls.model_config.get("env_prefix", ""))
        config_file = os.environ.get(f"{prefix}CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def public(self) -> dict[str, Any]:
        """The settings as a dict safe to log (secrets masked)."""
        out = {key: public_value(value) for key, value in self.model_dump().items()}
        for key in out:
            if any(word in key for word in ("secret", "password", "key", "token")):
                out[key] = "***" if out[key] else out[key]
        return out


class IdentitySettings(KilnSettings):
    """What every service's settings say of identities (kiln_common.auth), quotas,
    TLS and the plain health port."""

    auth: Literal["off", "required"] = "off"
    """required: every gRPC call but health needs a bearer token, a static Kiln
    token or (with oidc_issuer) an OIDC JWT, whose role must allow the call;
    off: no identities (one trusted user, as a bare local stack)."""
    oidc_issuer: str = ""
    """The OIDC issuer whose JWTs are accepted (its iss); empty: static tokens only."""
    oidc_audience: str = "kiln"
    """The aud a JWT must carry."""
    oidc_jwks_url: str = ""
    """The issuer's JWKS; empty: from its /.well-known/openid-configuration."""
    oidc_tenant_claim: str = "kiln_tenant"
    """The JWT claim naming the caller's tenant."""
    oidc_role_claim: str = "kiln_role"
    """The JWT claim naming the caller's role (viewer, builder, publisher, admin)."""
    oidc_refetch_seconds: float = Field(default=30.0, ge=0)
    """The least time between two fetches of the issuer's keys: a token naming a
    key id Kiln does not hold fetches them again, at most this often."""
    token: SecretStr | None = None
    """The bearer token this service sends when it calls another Kiln service
    (a static token of the service role)."""
    tls_cert_file: Path | None = None
    """A PEM certificate (chain): with tls_key_file, this service serves gRPC
    and HTTP over TLS only."""
    tls_key_file: Path | None = None
    """The private key (PEM) of tls_cert_file."""
    health_bind: str = ""
    """host:port of a plain gRPC server answering only the health service, for
    probes that speak no TLS (the kubelet's); empty: none (health is on the API
    port, as the rest)."""
    tls_ca_file: Path | None = None
    """The CA this service trusts when it calls another Kiln service (whose
    certificate must chain to it); unset: plain connections."""
    quotas: dict[str, Quota] = Field(default_factory=dict)
    """Per tenant, what it may hold at once: `concurrent_builds`,
    `queued_builds` (the builder's) and `stored_bytes` (storage's), e.g.
    `{"*": {"queued_builds": 50}, "web": {"concurrent_builds": 4}}`. A tenant
    not named gets the "*" entry; a limit not set is none. Default: none."""


def settings_error(exc: ValidationError) -> str:
    """What is wrong with the settings, a line a field, without the values
    given: a bad value may be a secret (pydantic's own text shows it)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def public_value(value: Any) -> Any:
    """A setting's value as it may be logged: a URL's credentials masked."""
    return redact(value) if isinstance(value, str) else value


def default_cache_dir() -> Path:
    """Where a builder on this machine caches layers: $KILN_CACHE/kiln, else
    $XDG_CACHE_HOME/kiln, else ~/.cache/kiln."""
    base = os.environ.get("KILN_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "kiln" if base else Path.home() / ".cache/kiln"
