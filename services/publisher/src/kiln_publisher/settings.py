"""Publisher service settings: env KILN_PUBLISHER_<FIELD>, or a YAML file named by
KILN_PUBLISHER_CONFIG_FILE (environment wins)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from kiln_common.settings import IdentitySettings
from kiln_publisher.tenants import ANY, EVERY, TenantTargets

# Where openstacksdk looks for clouds.yaml when OS_CLIENT_CONFIG_FILE is not set,
# in its order: the working directory, the user's config, the system's.
CLOUDS_YAML_PLACES = (
    Path("clouds.yaml"),
    Path("~/.config/openstack/clouds.yaml"),
    Path("/etc/openstack/clouds.yaml"),
)


def find_clouds_yaml(explicit: Path | None = None) -> Path | None:
    """The clouds.yaml the publisher uses: the setting, else the one openstacksdk
    would find (OS_CLIENT_CONFIG_FILE first); None when there is none."""
    if explicit is not None:
        return explicit
    named = os.environ.get("OS_CLIENT_CONFIG_FILE")
    if named:
        return Path(named)
    for place in CLOUDS_YAML_PLACES:
        path = place.expanduser()
        if path.is_file():
            return path
    return None


class PublisherSettings(IdentitySettings):
    model_config = SettingsConfigDict(env_prefix="KILN_PUBLISHER_", use_attribute_docstrings=True)

    grpc_bind: str = "127.0.0.1:50053"
    """host:port the gRPC API listens on (port 0 picks a free one)."""
    http_host: str = "127.0.0.1"
    """Address the marketplace's JSON API and HTML catalogue bind to."""
    http_port: int = 8083
    """Port of the marketplace HTTP server (0 picks a free one)."""
    public_url: str = Field(default="", pattern=r"^(https?://[^/\s?#]+)?$")
    """The marketplace's address as its readers reach it (https://market.example.org, no path):
    each entry's first location is its stable download link there, which outlives
    the storage URLs signed beside it. Empty: the address it serves on, unless
    that is a wildcard (0.0.0.0, ::), when entries carry the storage URL alone."""
    storage: str = "127.0.0.1:50051"
    """host:port of the storage service."""
    builder: str = ""
    """host:port of the Builder API, which hands out each build's recipe (its
    facts go into Glance properties and entries; its publish section drives
    automatic publishing). Unset: no recipe facts, and no automatic publishing."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server: publications, marketplace entries, events, the build.succeeded consumer."""
    nats_replicas: int = Field(default=1, ge=1, le=5)
    """Replicas of the buckets and streams this service creates (3 on a clustered NATS)."""
    outbox_dir: Path | None = None
    """Events that could not be sent while NATS was away, kept on disk until they
    are (a restarted process, or another on the same directory, sends them);
    unset: in memory, lost if the process dies first."""
    log_level: str = "INFO"
    """Python log level name."""
    shutdown_grace: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM."""

    clouds_yaml: Path | None = None
    """clouds.yaml naming the Glance clouds; default: where openstacksdk finds it
    (OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack, /etc/openstack)."""
    endorser_key_dir: Path = Path("/var/lib/kiln/publisher/endorsers")
    """Private keys of the endorsers this publisher signs for (one file per endorser)."""
    keyring_dir: Path = Path("/var/lib/kiln/publisher/keyring")
    """Public keys of trusted endorsers (and revocations) that entries are verified with."""
    default_endorser: str = ""
    """Endorser (e-mail) of entries when a request or recipe names none."""
    local_endorser: str = ""
    """An endorser (e-mail) whose key is generated in endorser_key_dir if missing,
    with its public key written to keyring_dir: `kiln up`'s local marketplace."""
    marketplace: bool = True
    """Serve the marketplace (entries, HTTP API and catalogue)."""
    keyring_reload_seconds: float = Field(default=30.0, ge=0)
    """How often the keyring and endorser key files are looked at: a changed
    Secret (a revocation added) is used without a restart; 0: never."""
    sweep_interval_seconds: float = 300.0
    """How often expired entries are looked for."""
    retire_action: Literal["none", "hide", "deactivate"] = "hide"
    """What happens to the Glance images of an expired entry."""
    auto_publish: bool = True
    """Publish builds whose recipe has publish targets when build.succeeded arrives,
    and channel-following Glance targets when their channel moves (channel.moved)."""
    url_seconds: int = 7 * 24 * 3600
    """Lifetime of the storage download URLs put into entries and given to Glance."""
    tenants: dict[str, TenantTargets] = Field(default_factory=lambda: {ANY: EVERY})
    """Per tenant, the Glance clouds it publishes to (and fetches bases from)
    and the endorsers its entries are signed by, e.g. `{"web": {"clouds":
    ["prod"], "endorsers": ["web@example.org"]}}`. A tenant not named gets
    the "*" entry, else nothing. Default: every tenant every target (one
    team's stack); a shared publisher names its tenants and drops "*"."""

    def clouds_file(self) -> Path | None:
        return find_clouds_yaml(self.clouds_yaml)
