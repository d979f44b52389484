"""Storage service settings: env KILN_STORAGE_<FIELD>, or a YAML file named by
KILN_STORAGE_CONFIG_FILE (environment wins)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from kiln_common.settings import IdentitySettings
from kiln_storage.urls import SigningKey


class StorageSettings(IdentitySettings):
    model_config = SettingsConfigDict(env_prefix="KILN_STORAGE_", use_attribute_docstrings=True)

    grpc_bind: str = "127.0.0.1:50051"
    """host:port the gRPC API listens on (port 0 picks a free one)."""
    backend: Literal["fs", "s3"] = "fs"
    """fs: files under fs_root, served by the built-in HTTP server; s3: an S3 bucket."""
    log_level: str = "INFO"
    """Python log level name."""
    shutdown_grace: float = 10.0
    """Seconds in-flight calls get to finish after SIGTERM."""

    fs_root: Path = Path("/var/lib/kiln/storage")
    """Directory of the filesystem backend."""
    http_host: str = "127.0.0.1"
    """Address the download HTTP server (filesystem backend) binds to."""
    http_port: int = 8081
    """Port of the download HTTP server (0 picks a free one)."""
    public_url: str = ""
    """Base URL clients reach the HTTP server at; default http://http_host:port."""
    url_signing_key: SecretStr | None = None
    """HMAC key for download URLs, ID:SECRET or SECRET (at least 32 bytes; its id
    then derived); default: a random key kept in fs_root/.url-signing-key."""
    url_signing_previous_key: SecretStr | None = None
    """The key before the current one, still accepted (not used to sign) while
    the URLs it signed live: set it to the old key when rotating, and drop it
    once the longest-lived URL it signed has expired (7 days at most)."""

    @field_validator("url_signing_key", "url_signing_previous_key")
    @classmethod
    def _signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            SigningKey.parse(value.get_secret_value())  # BadKey (a ValueError) says why
        return value

    def url_keys(self) -> tuple[SigningKey | None, SigningKey | None]:
        """The current key (None: the kept one) and the previous one."""
        keys = (self.url_signing_key, self.url_signing_previous_key)
        current, previous = (SigningKey.parse(k.get_secret_value()) if k else None for k in keys)
        return current, previous

    s3_endpoint: str = "127.0.0.1:8333"
    """host:port of the S3 API."""
    s3_secure: bool = False
    """Use HTTPS to reach S3."""
    s3_access_key: str = ""
    """S3 access key id."""
    s3_secret_key: SecretStr = SecretStr("")
    """S3 secret key."""
    s3_region: str = "us-east-1"
    """S3 region (set, so presigning never has to ask the server)."""
    s3_bucket: str = "kiln"
    """Bucket used by Kiln alone; created if missing."""
    s3_public_endpoint: str = ""
    """host:port that presigned URLs name, if clients reach S3 by another address."""
    s3_retries: int = 3
    """Retries (with backoff) of a failed S3 request before UNAVAILABLE."""
    s3_timeout: float = 5.0
    """Seconds to connect to S3."""

    nats_url: str = ""
    """NATS server for events (artifact.stored, artifact.deleted); empty: no events."""
    nats_replicas: int = Field(default=1, ge=1, le=5)
    """Replicas of the events stream if this service creates it (3 on a clustered NATS)."""
    outbox_dir: Path | None = None
    """Events that could not be sent while NATS was away, kept on disk until they
    are (a restarted process, or another on the same directory, sends them);
    unset: in memory, lost if the process dies first."""

    part_size: int = 16 * 1024 * 1024
    """Default part size of uploads, bytes (5 MiB to 64 MiB)."""
    upload_concurrency: int = 4
    """Parts of one upload stored at the same time."""
    upload_ttl_seconds: int = 24 * 3600
    """An upload not completed within this time is aborted and its parts removed."""
    janitor_interval_seconds: int = 600
    """How often abandoned uploads are looked for."""
