"""Assembles the storage service from its settings: backend, core, events,
download HTTP server, janitor and gRPC server."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from datetime import timedelta

import grpc
from minio import Minio

from kiln_api.storage.v1 import storage_pb2, storage_pb2_grpc
from kiln_common.auth.quotas import Quotas
from kiln_common.auth.serving import guard
from kiln_common.events import JetStreamPublisher, NoEvents, Publisher, default_source
from kiln_common.grpc_server import GrpcServer, service_server
from kiln_common.held import Held
from kiln_common.retry import RetryPolicy
from kiln_storage.backends import ObjectStore
from kiln_storage.backends.fs import FilesystemStore
from kiln_storage.backends.s3 import S3Store, make_http_client
from kiln_storage.core import CoreConfig, StorageCore
from kiln_storage.http import PUBLIC_ROUTES, make_app
from kiln_storage.servicer import StorageServicer
from kiln_storage.settings import StorageSettings
from kiln_storage.urls import HmacSigner, SigningKey, load_or_create_key

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
    """The running pieces; stop() releases what build() took, in reverse."""

    settings: StorageSettings
    core: StorageCore
    grpc: GrpcServer
    held: Held
    http_port: int = 0

    async def stop(self) -> None:
        await self.grpc.stop(self.settings.shutdown_grace)
        await self.held.aclose()


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
    policy = RetryPolicy(attempts=sys.maxsize, initial=retry, maximum=retry, deadline=None,
                         retry_on=(Exception,))  # fmt: skip
    await policy.acall(core.rebuild_index, "the index rebuild")


async def build(settings: StorageSettings) -> StorageApp:
    """Creates every piece except the gRPC listener, which start() opens."""
    held = Held()
    async with held.unwound_on_failure():
        return await _build(settings, held)


async def _build(settings: StorageSettings, held: Held) -> StorageApp:
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
        held.close_with(events.close)
    else:
        log.warning("no nats_url set: artifact events are not published")
    config = CoreConfig(
        part_size=settings.part_size,
        upload_concurrency=settings.upload_concurrency,
        upload_ttl=timedelta(seconds=settings.upload_ttl_seconds),
    )
    core = StorageCore(store, events, config, quotas=Quotas(settings.quotas))

    identities = guard(settings, events.js if isinstance(events, JetStreamPublisher) else None)
    await identities.prime()

    def register(server: grpc.aio.Server) -> None:
        storage_pb2_grpc.add_StorageServicer_to_server(StorageServicer(core), server)
        identities.register(server, token_writer=True)

    grpc_server, tls = service_server(settings, [SERVICE_NAME], register, identities.interceptors)
    app = StorageApp(settings, core, grpc_server, held)
    if isinstance(store, FilesystemStore):
        current, previous = settings.url_keys()
        if current is None:
            current = SigningKey(load_or_create_key(settings.fs_root / ".url-signing-key"))
        signer = HmacSigner(current, previous=previous)
        http = make_app(core, store, signer, identities.http(PUBLIC_ROUTES))
        port = await held.http(
            http, settings.http_host, settings.http_port, tls.http() if tls else None
        )
        scheme = "https" if tls else "http"
        own = f"{scheme}://{settings.http_host}:{port}"
        signer.base_url = (settings.public_url or own).rstrip("/")
        core.signer = signer
        app.http_port = port
        log.info("download HTTP server on %s", signer.base_url)
    held.run(
        _janitor(core, settings.janitor_interval_seconds),
        _index_rebuild(core, INDEX_RETRY_SECONDS),
    )
    return app
