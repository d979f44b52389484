"""Build records in a NATS key-value bucket, so any builder pod answers for
any build and a restart loses nothing. Every change is a compare-and-set on
the entry's revision: two pods changing one build never lose an update."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_common.errors import AlreadyExists, FailedPrecondition, NotFound
from kiln_common.ids import check_id

BUILDS_BUCKET = "kiln_builds"
KEYS_BUCKET = "kiln_build_keys"
CAS_ATTEMPTS = 20
TERMINAL = frozenset({pb.BUILD_STATE_SUCCEEDED, pb.BUILD_STATE_FAILED, pb.BUILD_STATE_CANCELLED})

T = TypeVar("T")
Mutation = Callable[[pb.Build], bool | None]  # False: leave the record as it is


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def state_name(state: int) -> str:
    return pb.BuildState.Name(state).removeprefix("BUILD_STATE_").lower()  # type: ignore[arg-type]


async def open_or_create(
    open_: Callable[[], Awaitable[T]], create: Callable[[], Awaitable[T]]
) -> T:
    """A JetStream bucket (key-value or object store), created if missing.
    Pods starting together may race to create it: the loser opens it."""
    try:
        return await open_()
    except (BucketNotFoundError, NotFoundError):
        pass
    try:
        return await create()
    except BadRequestError:
        return await open_()


async def _bucket(js: JetStreamContext, name: str) -> KeyValue:
    config = KeyValueConfig(bucket=name, history=1, storage=StorageType.FILE)
    return await open_or_create(
        lambda: js.key_value(name), lambda: js.create_key_value(config=config)
    )


class BuildRecords:
    def __init__(self, builds: KeyValue, keys: KeyValue) -> None:
        self._builds = builds
        self._keys = keys

    @classmethod
    async def open(cls, js: JetStreamContext) -> BuildRecords:
        return cls(await _bucket(js, BUILDS_BUCKET), await _bucket(js, KEYS_BUCKET))

    async def create(self, build: pb.Build) -> None:
        await self._builds.create(build.id, build.SerializeToString())

    async def get(self, build_id: str) -> pb.Build:
        return (await self._entry(build_id))[0]

    async def _entry(self, build_id: str) -> tuple[pb.Build, int]:
        check_id(build_id, "build id")
        try:
            entry = await self._builds.get(build_id)
        except KeyNotFoundError:
            raise NotFound(f"build {build_id} does not exist") from None
        build = pb.Build()
        build.ParseFromString(entry.value or b"")
        return build, int(entry.revision or 0)

    async def mutate(self, build_id: str, change: Mutation) -> pb.Build:
        """Applies change to the newest record and stores it if nothing else
        changed it in between (else reads it again and retries)."""
        for _ in range(CAS_ATTEMPTS):
            build, revision = await self._entry(build_id)
            if change(build) is False:
                return build
            try:
                await self._builds.update(build_id, build.SerializeToString(), last=revision)
                return build
            except KeyWrongLastSequenceError:
                continue
        raise FailedPrecondition(f"build {build_id} is changing too fast to update")

    async def claim_key(self, key: str, build_id: str) -> str | None:
        """Binds an idempotency key to build_id; returns the build it is
        already bound to instead, if any."""
        name = "k" + hashlib.sha256(key.encode()).hexdigest()
        try:
            await self._keys.create(name, build_id.encode())
            return None
        except KeyWrongLastSequenceError:
            entry = await self._keys.get(name)
            return (entry.value or b"").decode()

    async def ids(self) -> list[str]:
        try:
            return sorted(await self._builds.keys(), reverse=True)  # ids sort by time
        except NoKeysError:
            return []


def same_recipe(existing: pb.Build, digest: str) -> pb.Build:
    if existing.recipe_digest != digest:
        raise AlreadyExists(
            f"idempotency key {existing.idempotency_key!r} was used for build "
            f"{existing.id} with a different recipe"
        )
    return existing
