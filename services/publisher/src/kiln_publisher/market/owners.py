"""Whose each marketplace entry is: a third bucket beside the entries and
their high-water marks, per entry key the tenant whose publication first
endorsed the image. The tenant is not in the signed document (the catalogue
is public, tenants are not); only Kiln's publisher writes the bucket.

An entry's owner is the only tenant that endorses it again or deprecates it;
to any other it does not exist (NOT_FOUND, as an unknown identifier). An
entry made while identities were off has no owner: only a caller with every
tenant in scope (identities off, or Kiln's services) acts on it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.js.kv import KeyValue

from kiln_common import jetstream
from kiln_common.auth.identity import visible
from kiln_common.errors import FailedPrecondition, NotFound

OWNERS_SUFFIX = "_OWNERS"  # the owners bucket is the market's bucket + this


class Owners:
    def __init__(self, open_bucket: Callable[[], Awaitable[KeyValue]]) -> None:
        self._open = open_bucket
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._open()
        return self._kv

    async def of(self, key: str) -> str:
        """The entry's tenant ("" if none was recorded)."""
        kv = await self._bucket()
        try:
            found = await jetstream.mapped(lambda: kv.get(key))
        except NotFound:
            return ""
        return (found.value or b"").decode()

    async def check(self, key: str, gone: NotFound) -> None:
        """Raises gone (the words of an unknown entry) unless the caller's
        tenant owns the entry."""
        if not visible(await self.of(key)):
            raise gone

    async def claim(self, key: str, tenant: str) -> bool:
        """Records tenant as the entry's owner if it has none; False if the
        entry is another tenant's. No tenant (identities off): nothing kept."""
        if not tenant:
            return True
        kv = await self._bucket()
        try:
            await jetstream.mapped(lambda: kv.create(key, tenant.encode()))
            return True
        except FailedPrecondition:
            return await self.of(key) == tenant  # owned already: by whom?
