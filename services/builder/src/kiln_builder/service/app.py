"""Assembles the builder service from its settings: NATS (queue, records,
updates, events), the core, the gRPC API and, unless turned off, a worker.
Before the worker takes a build, the janitor reclaims what dead builds left."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from kiln_api.builder.v1 import builder_pb2, builder_pb2_grpc
from kiln_builder.cleanup import reclaim_all
from kiln_builder.service.channels.core import ChannelCore
from kiln_builder.service.channels.servicer import ChannelsServicer
from kiln_builder.service.channels.store import ChannelStore
from kiln_builder.service.core import BuilderCore, Nats
from kiln_builder.service.index import BuildIndex
from kiln_builder.service.queue import QueuePolicy
from kiln_builder.service.records import BUILDS_BUCKET
from kiln_builder.service.reporter import install_log_capture
from kiln_builder.service.schedules import clock
from kiln_builder.service.schedules.core import ScheduleCore
from kiln_builder.service.schedules.outcomes import Outcomes
from kiln_builder.service.schedules.runner import Runner
from kiln_builder.service.schedules.servicer import SchedulesServicer
from kiln_builder.service.schedules.store import ScheduleStore
from kiln_builder.service.servicer import BuilderServicer
from kiln_builder.service.settings import BuilderSettings
from kiln_builder.service.worker import Worker
from kiln_builder.storage import StorageAccess
from kiln_client.credentials import serve_with
from kiln_common import jetstream
from kiln_common.auth.quotas import Quotas
from kiln_common.auth.serving import guard
from kiln_common.events import JetStreamPublisher, default_source, ensure_stream
from kiln_common.grpc_server import GrpcServer, service_server
from kiln_common.held import Held
from kiln_common.outbox import Outbox

log = logging.getLogger(__name__)

SERVICE_NAME = builder_pb2.DESCRIPTOR.services_by_name["Builder"].full_name
SCHEDULES_NAME = builder_pb2.DESCRIPTOR.services_by_name["Schedules"].full_name
CHANNELS_NAME = builder_pb2.DESCRIPTOR.services_by_name["Channels"].full_name


@dataclass
class BuilderApp:
    settings: BuilderSettings
    core: BuilderCore
    grpc: GrpcServer
    held: Held
    worker: Worker | None = None

    async def stop(self) -> None:
        """Stops the API, hands running builds back to the queue, then closes
        everything (the outbox is sent first, while NATS is there)."""
        await self.grpc.stop(self.settings.shutdown_grace)
        await self.held.aclose()


async def build(settings: BuilderSettings) -> BuilderApp:
    """The service, its worker running (unless settings.worker is off)."""
    held = Held()
    async with held.unwound_on_failure():
        return await _build(settings, held)


async def _build(settings: BuilderSettings, held: Held) -> BuilderApp:
    token = settings.token.get_secret_value() if settings.token else None
    serve_with(token, settings.tls_ca_file, held)
    nc = await jetstream.connect(settings.nats_url, settings.name())
    held.close_with(nc.drain)  # released last: the others below need it
    policy = QueuePolicy(ack_wait=settings.ack_wait_seconds, max_deliver=settings.max_deliver)
    shared = await Nats.open(nc, policy, settings.nats_replicas)
    await ensure_stream(shared.js, replicas=settings.nats_replicas)
    outbox = Outbox(settings.outbox_dir, settings.name())
    events = JetStreamPublisher(nc, shared.js, default_source("kiln-builder"), outbox)
    held.close_with(events.close)  # sends the outbox first, while it can
    index = BuildIndex(shared.js, shared.records.builds, BUILDS_BUCKET)
    index.start()
    held.close_with(index.stop)
    core = BuilderCore(shared, events, index, Quotas(settings.quotas))
    channels = ChannelCore(core, await ChannelStore.open(shared.js, settings.nats_replicas), events)
    core.channels = channels  # the worker numbers builds, moves latest, resolves channel bases
    schedules = await _schedules(settings, shared, events, core, held)

    identities = guard(settings, shared.js)
    await identities.prime()

    def register(server: grpc.aio.Server) -> None:
        builder_pb2_grpc.add_BuilderServicer_to_server(BuilderServicer(core), server)
        builder_pb2_grpc.add_SchedulesServicer_to_server(SchedulesServicer(schedules), server)
        builder_pb2_grpc.add_ChannelsServicer_to_server(ChannelsServicer(channels), server)
        identities.register(server)

    names = [SERVICE_NAME, SCHEDULES_NAME, CHANNELS_NAME]
    grpc_server, _ = service_server(settings, names, register, identities.interceptors)
    app = BuilderApp(settings, core, grpc_server, held)
    if settings.worker:
        await _prepare_worker(settings)
        app.worker = Worker(core, settings)
        held.run(app.worker.run())
        held.close_with(app.worker.shutdown)  # before the task is cancelled: builds go back
    return app


async def _schedules(
    settings: BuilderSettings, shared: Nats, events: JetStreamPublisher, core: BuilderCore,
    held: Held,
) -> ScheduleCore:  # fmt: skip
    """The Schedules core; with settings.schedules, this pod also takes ticks
    and settles scheduled builds' ends."""
    await clock.ensure(shared.js, settings.ack_wait_seconds, settings.nats_replicas)
    store = await ScheduleStore.open(shared.js, settings.nats_replicas)
    schedules = ScheduleCore(shared.js, store, events, settings.schedule_min_seconds)
    if settings.schedules:
        outcomes = Outcomes(schedules, core, settings.ack_wait_seconds)
        storage = StorageAccess(settings.storage, settings.storage_retry_seconds)
        runner = Runner(schedules, core, outcomes, settings, storage)
        held.run(runner.run(), outcomes.run())
    return schedules


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
