"""Build records in a NATS key-value bucket, so any builder pod answers for
any build and a restart loses nothing. Every change is a compare-and-set on
the entry's revision: two pods changing one build never lose an update."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from kiln_client import wire
from kiln_common import jetstream
from kiln_common.builds import Build
from kiln_common.errors import AlreadyExists, FailedPrecondition, NotFound
from kiln_common.ids import check_id

BUILDS_BUCKET = "kiln_builds"
KEYS_BUCKET = "kiln_build_keys"
RESULTS_BUCKET = "kiln_build_results"  # the result cache: a tenant's inputs -> the build
CAS_ATTEMPTS = 20

Mutation = Callable[[Build], bool]  # a lifecycle transition: True if it changed the build


class BuildRecords:
    def __init__(
        self, js: JetStreamContext, builds: KeyValue, keys: KeyValue, results: KeyValue
    ) -> None:
        self._js = js
        self.builds = builds  # public: the list index watches this bucket
        self._keys = keys
        self._results = results

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> BuildRecords:
        builds = await jetstream.key_value(js, BUILDS_BUCKET, replicas=replicas)
        keys = await jetstream.key_value(js, KEYS_BUCKET, replicas=replicas)
        results = await jetstream.key_value(js, RESULTS_BUCKET, replicas=replicas)
        return cls(js, builds, keys, results)

    async def create(self, build: Build) -> None:
        await self.builds.create(build.id, wire.build_bytes(build))

    async def get(self, build_id: str) -> Build:
        return (await self._entry(build_id))[0]

    async def _entry(self, build_id: str) -> tuple[Build, int, bytes]:
        check_id(build_id, "build id")
        try:
            entry = await self.builds.get(build_id)
        except KeyNotFoundError:
            raise missing(build_id) from None
        stored = entry.value or b""
        return wire.build_from_bytes(stored), int(entry.revision or 0), stored

    async def mutate(self, build_id: str, change: Mutation) -> tuple[Build, bool]:
        """Applies change to the newest record and stores it if nothing else
        changed it in between (else reads it again and retries). Returns the
        record and whether this call changed it: only the caller whose write
        made a transition announces it."""
        for _ in range(CAS_ATTEMPTS):
            build, revision, stored = await self._entry(build_id)
            if not change(build):
                return build, False
            try:
                # Over the stored bytes: fields a newer pod wrote survive.
                data = wire.build_bytes(build, over=stored)
                await self.builds.update(build_id, data, last=revision)
                return build, True
            except KeyWrongLastSequenceError:
                continue
        raise FailedPrecondition(f"build {build_id} is changing too fast to update")

    async def bound(self, tenant: str, key: str) -> str | None:
        """The build a tenant's idempotency key is bound to, if any."""
        try:
            entry = await self._keys.get(_key_name(tenant, key))
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def claim_key(self, tenant: str, key: str, build_id: str) -> str | None:
        """Binds a tenant's idempotency key to build_id; returns the build it
        is already bound to instead, if any. Keys are the tenant's own: one
        tenant's key never finds, or blocks, another's build."""
        name = _key_name(tenant, key)
        try:
            await self._keys.create(name, build_id.encode())
            return None
        except KeyWrongLastSequenceError:
            entry = await self._keys.get(name)
            return (entry.value or b"").decode()

    async def result(self, tenant: str, inputs: str) -> str | None:
        """The newest succeeded build of a tenant's inputs (a fingerprint and
        what the build was asked for), if one was recorded."""
        try:
            entry = await self._results.get(_key_name(tenant, inputs, "r"))
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode() or None

    async def remember(self, tenant: str, inputs: str, build_id: str) -> None:
        """build_id succeeded with these inputs: the result cache's answer for
        them from now on. A tenant's own: another tenant never gets its artifacts."""
        await self._results.put(_key_name(tenant, inputs, "r"), build_id.encode())

    async def ids(self) -> list[str]:
        ids = await jetstream.mapped(lambda: jetstream.kv_keys(self._js, BUILDS_BUCKET))
        return sorted(ids, reverse=True)  # ids sort by time


def _key_name(tenant: str, key: str, prefix: str = "k") -> str:
    scoped = f"{tenant}\0{key}" if tenant else key  # no tenant: the name it always had
    return prefix + hashlib.sha256(scoped.encode()).hexdigest()


def missing(build_id: str) -> NotFound:
    """An unknown build, and another tenant's: the same words for both."""
    return NotFound(f"build {build_id} does not exist")


def same_recipe(existing: Build, digest: str) -> Build:
    if existing.recipe_digest != digest:
        raise AlreadyExists(
            f"idempotency key {existing.idempotency_key!r} was used for build "
            f"{existing.id} with a different recipe"
        )
    return existing
