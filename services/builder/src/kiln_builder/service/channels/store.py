"""Channels and build numbers in a NATS key-value bucket: one entry per
tenant and recipe name holds all that name's channels with their histories
(so `kiln channel ls` is one read and a move is one compare-and-set), and one
entry per tenant and name counts its builds."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from kiln_client import wire
from kiln_common import jetstream
from kiln_common.channels import Channel
from kiln_common.errors import FailedPrecondition

CHANNELS_BUCKET = "kiln_channels"
CAS_ATTEMPTS = 20
Change = Callable[[list[Channel]], bool]  # True if it changed the channels


def _key(prefix: str, tenant: str, name: str) -> str:
    # KV keys take a narrow alphabet; tenants and names are hashed into it.
    return prefix + hashlib.sha256(f"{tenant}\0{name}".encode()).hexdigest()


async def _back_off(attempt: int) -> None:
    """Before a compare-and-set is tried again: a random pause that grows,
    so pods that lost a race to each other do not lose it again in step."""
    if attempt:
        await asyncio.sleep(random.uniform(0, min(0.5, 0.005 * 2**attempt)))


class ChannelStore:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, replicas: int = 1) -> ChannelStore:
        return cls(await jetstream.key_value(js, CHANNELS_BUCKET, replicas=replicas))

    async def channels(self, tenant: str, name: str) -> list[Channel]:
        return (await self._entry(tenant, name))[0]

    async def _entry(self, tenant: str, name: str) -> tuple[list[Channel], int | None]:
        try:
            entry = await self._kv.get(_key("c", tenant, name))
        except KeyNotFoundError:
            return [], None
        return wire.channels_from_bytes(entry.value or b""), int(entry.revision or 0)

    async def mutate(self, tenant: str, name: str, change: Change) -> tuple[list[Channel], bool]:
        """change applied to the newest channels of the name, stored if no one
        changed them meanwhile (else read again); whether this call changed them."""
        key = _key("c", tenant, name)
        for attempt in range(CAS_ATTEMPTS):
            await _back_off(attempt)
            channels, revision = await self._entry(tenant, name)
            if not change(channels):
                return channels, False
            data = wire.channels_bytes(channels)
            try:
                if revision is None:
                    await self._kv.create(key, data)
                else:
                    await self._kv.update(key, data, last=revision)
                return channels, True
            except KeyWrongLastSequenceError:
                continue
        raise FailedPrecondition(f"the channels of {name} are changing too fast to update")

    async def next_number(self, tenant: str, name: str) -> int:
        """The name's next build number: one more than the last handed out,
        never twice the same (a compare-and-set counter)."""
        key = _key("n", tenant, name)
        for attempt in range(CAS_ATTEMPTS):
            await _back_off(attempt)
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                entry = None
            number = int((entry.value or b"0").decode()) + 1 if entry is not None else 1
            try:
                if entry is None:
                    await self._kv.create(key, str(number).encode())
                else:
                    await self._kv.update(key, str(number).encode(), last=entry.revision)
                return number
            except KeyWrongLastSequenceError:
                continue
        raise FailedPrecondition(f"the build numbers of {name} are changing too fast")
