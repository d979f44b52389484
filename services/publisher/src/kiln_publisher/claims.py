"""Claims on automatic publications: one replica at a time works on one, and a
claim a replica that died left behind is taken over once it is stale. A claim
is a key of the publications bucket beside the record it claims."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from nats.js.kv import KeyValue

from kiln_common import jetstream
from kiln_common.errors import FailedPrecondition, NotFound
from kiln_publisher.model import record_key

CLAIM_PREFIX = "claim."


class Claims:
    def __init__(self, bucket: Callable[[], Awaitable[KeyValue]]) -> None:
        self._bucket = bucket

    async def claim(self, publication_id: str, owner: str, ttl: float) -> int | None:
        """Takes publication_id for owner; the claim's revision, or None when
        another owner holds a claim younger than ttl seconds (a stale one, left
        by a replica that died, is taken over)."""
        kv, key, value = await self._claim(publication_id, owner)
        try:
            return int(await jetstream.mapped(lambda: kv.create(key, value)))
        except FailedPrecondition:
            pass  # held (or just released): look at it
        try:
            held = await jetstream.mapped(lambda: kv.get(key))
        except NotFound:
            return None  # released meanwhile: the next delivery takes it
        age = time.time() - float(json.loads(held.value or b"{}").get("at", 0))
        if held.value and age < ttl:
            return None
        try:
            return int(await jetstream.mapped(lambda: kv.update(key, value, last=held.revision)))
        except FailedPrecondition:
            return None  # another replica took it over first

    async def renew(self, publication_id: str, owner: str, revision: int) -> int:
        kv, key, value = await self._claim(publication_id, owner)
        return int(await jetstream.mapped(lambda: kv.update(key, value, last=revision)))

    async def release(self, publication_id: str) -> None:
        kv, key, _ = await self._claim(publication_id, "")
        await jetstream.mapped(lambda: kv.delete(key))

    async def _claim(self, publication_id: str, owner: str) -> tuple[KeyValue, str, bytes]:
        """The bucket, the claim's key and a fresh value saying owner holds it now."""
        value = json.dumps({"owner": owner, "at": time.time()}).encode()
        return await self._bucket(), f"{CLAIM_PREFIX}{record_key(publication_id)}", value
