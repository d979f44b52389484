"""Which build a free slot takes: fair between tenants, within their quotas.

Each tenant has a queue of its own (kiln_builder.service.queue). A worker
with a free slot looks at the tenants that have builds not yet ended (the
build index counts them, every pod alike) in this order: fewest builds
running first; among equals, the one this worker started a build for
longest ago (round robin). It takes the first build it finds. So a tenant
with a hundred queued builds and one with a single build alternate: the
single build starts within one build slot.

A tenant with `concurrent_builds` running is passed over. Its queue is still
looked at once an ack_wait, because a build whose worker died stays
"running" in its record until it is delivered again, and only a worker that
takes it can run it again; a queued build taken then is put back at the end
of its tenant's queue (a new message, so no delivery is spent on it). Two
workers picking at the same moment may each start one build of a tenant one
below its limit: the limit may be passed by one build per worker, briefly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from kiln_builder.service import queue
from kiln_builder.service.index import BuildIndex
from kiln_builder.service.queue import Delivery, JetStreamDelivery, QueuePolicy
from kiln_common.auth.quotas import Quotas
from kiln_common.builds import Build, BuildState

log = logging.getLogger(__name__)
IDLE_SECONDS = 1.0  # the longest a worker with a free slot waits before looking again
# How often the queues themselves are asked which hold messages: a message
# whose build ended while queued (cancelled) is taken then, and dropped.
WAITING_SECONDS = 30.0
LIVE = (BuildState.QUEUED, BuildState.RUNNING)


def order(
    tenants: dict[str, int], running: dict[str, int], last_started: dict[str, float]
) -> list[str]:
    """The tenants (with builds not ended) in the order a free slot tries them."""
    return sorted(tenants, key=lambda t: (running.get(t, 0), last_started.get(t, 0.0), t))


class Scheduler:
    def __init__(
        self, nc: NatsClient, js: JetStreamContext, index: BuildIndex, quotas: Quotas,
        policy: QueuePolicy,
    ) -> None:  # fmt: skip
        self.nc = nc
        self.js = js
        self.index = index
        self.quotas = quotas
        self.policy = policy
        self._last_started: dict[str, float] = {}  # this worker's, monotonic
        self._probed: dict[str, float] = {}  # when a full tenant's queue was last looked at
        self._waiting: set[str] = set()
        self._waiting_at = 0.0
        # The builds this worker took and has not finished, by id: their
        # tenant. The index learns a build runs only once its record says so,
        # a moment after it was taken: two slots freed together would both
        # see the tenant below its limit without this.
        self._mine: dict[str, str] = {}

    def _running(self, tenant: str, counted: int, but: str = "") -> int:
        """The tenant's running builds: the index's count, or this worker's
        own (taken, not finished; but one not counted), whichever is more."""
        own = sum(1 for b, t in self._mine.items() if t == tenant and b != but)
        return max(counted, own)

    def finished(self, build_id: str) -> None:
        """The worker is done with a build it took (ended, handed back, put back)."""
        self._mine.pop(build_id, None)

    async def next(self) -> Delivery | None:
        """The next build message to run, or None if no tenant has one now."""
        self.index.wake.clear()  # a write from here on ends idle() at once
        live = self.index.tenants(*LIVE)
        live.setdefault("", 0)  # builds made with identities off
        for tenant in await self._queues_waiting():
            live.setdefault(tenant, 0)
        running = self.index.tenants(BuildState.RUNNING)
        running = {t: self._running(t, running.get(t, 0)) for t in live}
        for tenant in order(live, running, self._last_started):
            if self._full(tenant, running[tenant]) and not self._probe_due(tenant):
                continue
            msg = await queue.take(self.nc, tenant)
            if msg is not None:
                self._last_started[tenant] = time.monotonic()
                delivery = JetStreamDelivery(msg)
                self._mine[delivery.build_id] = tenant
                return delivery
        return None

    async def _queues_waiting(self) -> set[str]:
        now = time.monotonic()
        if now - self._waiting_at >= WAITING_SECONDS:
            self._waiting_at = now
            self._waiting = await queue.waiting(self.js)
        return self._waiting

    async def idle(self) -> None:
        """Waits until a build record changes (or IDLE_SECONDS pass)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(IDLE_SECONDS):
                await self.index.wake.wait()

    def _full(self, tenant: str, running: int) -> bool:
        limit = self.quotas.of(tenant).concurrent_builds
        return limit is not None and running >= limit

    def _probe_due(self, tenant: str) -> bool:
        now = time.monotonic()
        if now - self._probed.get(tenant, 0.0) < self.policy.ack_wait:
            return False
        self._probed[tenant] = now
        return True

    async def admit(self, delivery: Delivery, build: Build) -> bool:
        """Whether the build may start now. A queued build of a tenant at its
        concurrent_builds quota is put back at the end of its queue (False);
        a running one (its worker died) is run again: it holds its place."""
        if build.state != BuildState.QUEUED:
            return True
        counted = self.index.count(build.tenant, BuildState.RUNNING)
        if not self._full(build.tenant, self._running(build.tenant, counted, but=build.id)):
            return True
        await queue.enqueue(self.js, build.id, build.tenant, again=time.time_ns())
        await delivery.ack()
        log.info("build %s: tenant %s is at its concurrent builds; put back in its queue",
                 build.id, build.tenant)  # fmt: skip
        return False
