"""Assembles the storage service from its settings: backend, core, events,
download HTTP server, janitor and gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from minio import Minio

from kiln_api.storage.v1 import storage_pb2, storage_pb2_grpc
from kiln_common.events import JetStreamPublisher, NoEvents, Publisher, default_source
from kiln_common.grpc_server import GrpcServer
from kiln_storage.backends import ObjectStore
from kiln_storage.backends.fs import FilesystemStore
from kiln_storage.backends.s3 import S3Store, make_http_client
from kiln_storage.core import CoreConfig, StorageCore
from kiln_storage.http import make_app, start_http
from kiln_storage.servicer import StorageServicer
from kiln_storage.settings import StorageSettings
from kiln_storage.urls import HmacSigner, load_or_create_key

log = logging.getLogger(__name__)

SERVICE_NAME = storage_pb2.DESCRIPTOR.services_by_name["Storage"].full_name
INDEX_RETRY_SECONDS = 60.0


def make_s3_store(s: StorageSettings) -> S3Store:
    def client(endpoint: str) -> Minio:
        return Minio(
            endpoint,
            access_key=s.s3_access_key,
            secret_key=s.s3_secret_key.get_secret_value(),
            secure=s.s3_secure,
            region=s.s3_region,
            http_client=make_http_client(s.s3_retries, s.s3_timeout, s.upload_concurrency + 8),
        )

    presign = client(s.s3_public_endpoint) if s.s3_public_endpoint else None
    return S3Store(client(s.s3_endpoint), s.s3_bucket, presign_client=presign)


@dataclass
class StorageApp:
    """The running pieces; stop() undoes start() in reverse."""

    settings: StorageSettings
    core: StorageCore
    grpc: GrpcServer
    http_port: int = 0
    _cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def stop(self) -> None:
        await self.grpc.stop(self.settings.shutdown_grace)
        while self._cleanups:
            with contextlib.suppress(Exception):
                await self._cleanups.pop()()


async def _janitor(core: StorageCore, every: float) -> None:
    while True:
        try:
            await core.sweep()
        except Exception:
            log.exception("janitor sweep failed")
        await asyncio.sleep(every)


async def _index_rebuild(core: StorageCore, retry: float) -> None:
    """Indexes the records of a store written before the index existed, once
    (a single HEAD of index/ready when it is done already). Until it has,
    listing reads every record instead, so the service serves meanwhile."""
    while True:
        try:
            await core.rebuild_index()
            return
        except Exception:
            log.exception("index rebuild failed; retrying in %.0f s", retry)
        await asyncio.sleep(retry)


async def build(settings: StorageSettings) -> StorageApp:
    """Creates every piece except the gRPC listener, which start() opens."""
    cleanups: list[Callable[[], Awaitable[None]]] = []
    store: ObjectStore
    if settings.backend == "s3":
        s3 = make_s3_store(settings)
        await s3.ensure_bucket()
        store = s3
    else:
        store = FilesystemStore(settings.fs_root)
    events: Publisher = NoEvents()
    if settings.nats_url:
        events = await JetStreamPublisher.connect(
            settings.nats_url, default_source("kiln-storage"), settings.outbox_dir,
            replicas=settings.nats_replicas,
        )  # fmt: skip
        cleanups.append(events.close)
    else:
        log.warning("no nats_url set: artifact events are not published")
    config = CoreConfig(
        part_size=settings.part_size,
        upload_concurrency=settings.upload_concurrency,
        upload_ttl=timedelta(seconds=settings.upload_ttl_seconds),
    )
    core = StorageCore(store, events, config)

    def register(server: grpc.aio.Server) -> None:
        storage_pb2_grpc.add_StorageServicer_to_server(StorageServicer(core), server)

    app = StorageApp(settings, core, GrpcServer(settings.grpc_bind, [SERVICE_NAME], register))
    if isinstance(store, FilesystemStore):
        secret = settings.url_signing_key
        key = (
            secret.get_secret_value().encode()
            if secret
            else load_or_create_key(settings.fs_root / ".url-signing-key")
        )
        signer = HmacSigner(key)
        runner, port = await start_http(
            make_app(core, store, signer), settings.http_host, settings.http_port
        )
        cleanups.append(runner.cleanup)
        signer.base_url = (settings.public_url or f"http://{settings.http_host}:{port}").rstrip("/")
        core.signer = signer
        app.http_port = port
        log.info("download HTTP server on %s", signer.base_url)
    tasks = [
        asyncio.create_task(_janitor(core, settings.janitor_interval_seconds)),
        asyncio.create_task(_index_rebuild(core, INDEX_RETRY_SECONDS)),
    ]

    async def stop_tasks() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    cleanups.append(stop_tasks)
    app._cleanups = cleanups
    return app
