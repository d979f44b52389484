"""Assembles the builder service from its settings: NATS (queue, records,
updates, events), the core, the gRPC API and, unless turned off, a worker.
Before the worker takes a build, the janitor reclaims what dead builds left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc

from kiln_api.builder.v1 import builder_pb2, builder_pb2_grpc
from kiln_builder.cleanup import reclaim_all
from kiln_builder.service.core import BuilderCore, Nats
from kiln_builder.service.index import BuildIndex
from kiln_builder.service.queue import QueuePolicy
from kiln_builder.service.records import BUILDS_BUCKET
from kiln_builder.service.reporter import install_log_capture
from kiln_builder.service.servicer import BuilderServicer
from kiln_builder.service.settings import BuilderSettings
from kiln_builder.service.worker import Worker
from kiln_builder.storage import set_retry_seconds as set_storage_retry_seconds
from kiln_common import jetstream
from kiln_common.events import JetStreamPublisher, default_source, ensure_stream
from kiln_common.grpc_server import GrpcServer
from kiln_common.outbox import Outbox

log = logging.getLogger(__name__)

SERVICE_NAME = builder_pb2.DESCRIPTOR.services_by_name["Builder"].full_name


@dataclass
class BuilderApp:
    settings: BuilderSettings
    core: BuilderCore
    grpc: GrpcServer
    worker: Worker | None = None
    _worker_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start_worker(self) -> None:
        if self.worker is not None:
            self._worker_task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        """Hands running builds back to the queue, then closes everything."""
        await self.grpc.stop(self.settings.shutdown_grace)
        if self.worker is not None:
            await self.worker.shutdown()
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker_task
        if self.core.index is not None:
            await self.core.index.stop()
        with contextlib.suppress(Exception):
            await self.core.events.close()  # sends the outbox first, while it can
        with contextlib.suppress(Exception):
            await self.core.nats.nc.drain()


async def build(settings: BuilderSettings) -> BuilderApp:
    set_storage_retry_seconds(settings.storage_retry_seconds)
    nc = await jetstream.connect(settings.nats_url, settings.name())
    policy = QueuePolicy(ack_wait=settings.ack_wait_seconds, max_deliver=settings.max_deliver)
    shared = await Nats.open(nc, policy, settings.nats_replicas)
    await ensure_stream(shared.js, replicas=settings.nats_replicas)
    outbox = Outbox(settings.outbox_dir, settings.name())
    events = JetStreamPublisher(nc, shared.js, default_source("kiln-builder"), outbox)
    index = BuildIndex(shared.js, shared.records.builds, BUILDS_BUCKET)
    index.start()
    core = BuilderCore(shared, events, index)

    def register(server: grpc.aio.Server) -> None:
        builder_pb2_grpc.add_BuilderServicer_to_server(BuilderServicer(core), server)

    app = BuilderApp(settings, core, GrpcServer(settings.grpc_bind, [SERVICE_NAME], register))
    if settings.worker:
        await _prepare_worker(settings)
        app.worker = Worker(core, settings)
    return app


async def _prepare_worker(settings: BuilderSettings) -> None:
    install_log_capture()
    settings.work_root.mkdir(parents=True, exist_ok=True)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    if settings.boot_test and settings.start_libvirtd:
        from kiln_builder.libvirtd import ensure_libvirtd

        await asyncio.to_thread(ensure_libvirtd, fix_kvm_device=settings.fix_kvm_device)
    for item in await reclaim_all(settings.work_root):
        log.warning("janitor released %s", item)
    _say_isolation(settings)


def _say_isolation(settings: BuilderSettings) -> None:
    """Where this worker runs recipe code, and what its fetches may reach."""
    if settings.force_vm:
        log.info("isolation: every build runs in vm (KILN_BUILDER_FORCE_VM)")
    elif why := settings.unconfigured():
        log.warning("isolation: %s", why)
    else:
        denied = ", ".join(settings.denied_networks()) or "no network but its own (no cluster)"
        log.info("isolation: the recipe's; the sandbox refuses %s", denied)
    policy = settings.egress_policy()
    log.info("egress: loopback %s; denied %s; allowed %s",
             "allowed" if policy.allow_loopback else "refused",
             ", ".join(policy.denied) or "-", ", ".join(policy.allowed) or "-")  # fmt: skip
