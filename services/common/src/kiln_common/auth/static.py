"""Static tokens, for automation: `kiln_<id>_<secret>`, issued by an admin
(`kiln token create`) with a tenant, a role and an expiry, and revocable. Only
the secret's SHA-256 is stored (the secret is 256 random bits, so a fast hash
is enough: nothing to guess), in the NATS KV bucket every service reads. A
token is looked up by its id; a revocation is seen within CACHE_SECONDS."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from kiln_common import jetstream
from kiln_common.auth.identity import Identity, Role
from kiln_common.errors import InvalidArgument, NotFound, Unauthenticated
from kiln_common.ids import check_id, new_id

BUCKET = "kiln_tokens"
PREFIX = "kiln_"
CACHE_SECONDS = 2.0
_TOKEN_RE = re.compile(r"kiln_([0-9a-hjkmnp-tv-z]{26})_([A-Za-z0-9_-]{43})")
_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def check_tenant(name: str) -> str:
    if not _TENANT_RE.fullmatch(name):
        raise InvalidArgument(f"tenant {name[:64]!r}: 1-63 of a-z 0-9 -, starting alphanumeric")
    return name


@dataclass(frozen=True)
class TokenRecord:
    id: str
    tenant: str
    role: Role
    sha256: str  # of the secret
    created_at: float
    expires_at: float | None = None  # unix time; None: does not expire
    revoked_at: float | None = None
    description: str = ""

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TokenRecord:
        """A stored record; fields a newer version added are ignored."""
        data = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known} | {"role": Role(data["role"])})

    def usable(self, now: float) -> str | None:
        """None if the token may be used now, else why not."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return None


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class StaticTokens:
    """The token records in their bucket (made on first use)."""

    def __init__(self, js: JetStreamContext, bucket: str = BUCKET) -> None:
        self._js = js
        self._name = bucket
        self._kv: KeyValue | None = None
        self._cache: dict[str, tuple[float, TokenRecord]] = {}  # only real tokens' records

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await jetstream.mapped(lambda: jetstream.key_value(self._js, self._name))
        return self._kv

    async def issue(
        self,
        tenant: str,
        role: Role,
        expires_in: timedelta | None = None,
        description: str = "",
    ) -> tuple[str, TokenRecord]:
        """A new token (shown once: only its digest is kept) and its record."""
        secret = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + expires_in.total_seconds() if expires_in is not None else None
        record = TokenRecord(
            new_id(), check_tenant(tenant), role, _digest(secret), now, expires,
            description=description[:200],
        )  # fmt: skip
        kv = await self._bucket()
        await jetstream.mapped(lambda: kv.create(record.id, record.to_json()))
        return f"{PREFIX}{record.id}_{secret}", record

    async def get(self, token_id: str) -> TokenRecord:
        check_id(token_id, "token id")
        kv = await self._bucket()
        try:
            found = await jetstream.mapped(lambda: kv.get(token_id))
        except NotFound:
            raise NotFound(f"no token {token_id}") from None
        if not found.value:
            raise NotFound(f"no token {token_id}")
        return TokenRecord.from_json(found.value)

    async def records(self) -> list[TokenRecord]:
        await self._bucket()  # made if missing
        keys = await jetstream.mapped(lambda: jetstream.kv_keys(self._js, self._name))
        return sorted([await self.get(key) for key in keys], key=lambda r: r.created_at)

    async def revoke(self, token_id: str) -> TokenRecord:
        record = await self.get(token_id)
        if record.revoked_at is None:
            record = dataclasses.replace(record, revoked_at=time.time())
            kv = await self._bucket()
            await jetstream.mapped(lambda: kv.put(token_id, record.to_json()))
        self._cache.pop(token_id, None)
        return record

    async def authenticate(self, token: str) -> Identity:
        """The token's identity; Unauthenticated, saying why, if it has none."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise Unauthenticated("not a Kiln token")
        token_id, secret = match.groups()
        record = await self._lookup(token_id)
        if record is None or not hmac.compare_digest(record.sha256, _digest(secret)):
            raise Unauthenticated("unknown token")
        why = record.usable(time.time())
        if why is not None:
            raise Unauthenticated(f"token {token_id} is {why}")
        return Identity(record.id, record.tenant, record.role, "static")

    async def _lookup(self, token_id: str) -> TokenRecord | None:
        """The token's record, cached briefly; an unknown id is never cached
        (made-up ids must not grow the cache)."""
        now = time.monotonic()
        cached = self._cache.get(token_id)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            record = await self.get(token_id)
        except NotFound:
            self._cache.pop(token_id, None)
            return None
        self._cache[token_id] = (now, record)
        return record


def expires_text(record: TokenRecord) -> str:
    if record.expires_at is None:
        return "never"
    return datetime.fromtimestamp(record.expires_at, UTC).isoformat(timespec="seconds")
