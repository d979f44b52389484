"""Assembles the publisher from its settings: NATS (publications, entries,
events, the build.succeeded, channel.moved and build.revoked consumers),
storage, Glance from clouds.yaml, the marketplace with its keyring and HTTP
app, the expiry sweep and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from kiln_api.publisher.v1 import publisher_pb2, publisher_pb2_grpc
from kiln_client import AsyncBuilderClient, AsyncStorageClient
from kiln_client.channels import AsyncChannelsClient
from kiln_client.credentials import serve_with
from kiln_common import jetstream
from kiln_common.auth.serving import guard
from kiln_common.errors import KilnError, NotFound
from kiln_common.events import JetStreamPublisher, default_source, ensure_stream
from kiln_common.grpc_server import GrpcServer, service_server
from kiln_common.held import Held
from kiln_common.outbox import Outbox
from kiln_market import Keyring, generate_endorser, keyring_files, write_keyring
from kiln_publisher import autopublish, channelpublish, revoke
from kiln_publisher.core import PublisherCore
from kiln_publisher.glance import GlancePublisher
from kiln_publisher.market import Market, make_app
from kiln_publisher.market.http import PUBLIC_ROUTES
from kiln_publisher.market.sbom import StoredSboms
from kiln_publisher.servicer import PublisherServicer
from kiln_publisher.settings import PublisherSettings
from kiln_publisher.tenants import TenantPolicy

log = logging.getLogger(__name__)

SERVICE_NAME = publisher_pb2.DESCRIPTOR.services_by_name["Publisher"].full_name


@dataclass
class PublisherApp:
    settings: PublisherSettings
    core: PublisherCore
    grpc: GrpcServer
    held: Held
    http_port: int = 0

    async def stop(self) -> None:
        await self.grpc.stop(self.settings.shutdown_grace)
        await self.held.aclose()


def local_endorser(s: PublisherSettings) -> None:
    """Generates the local endorser's key once and publishes its public half
    in the keyring, so `kiln market verify` trusts it."""
    key = generate_endorser(s.endorser_key_dir / "local.json", s.local_endorser)
    public = Keyring()
    public.add(key.email, key.key)
    write_keyring(s.keyring_dir / "local.json", public, private=False)


def keyring_paths(s: PublisherSettings) -> list[Path]:
    return [p for p in (s.keyring_dir, s.endorser_key_dir) if p.exists()]


def load_keyring(s: PublisherSettings) -> Keyring:
    return Keyring.load(*keyring_paths(s))


KeyringFiles = tuple[tuple[str, int, int, int], ...]


def keyring_state(s: PublisherSettings) -> KeyringFiles:
    """What the key files look like now. A mounted Secret is updated in place
    (a new directory swapped in behind symlinks), so each file is stat'ed
    through its links."""
    found = []
    for file in keyring_files(*keyring_paths(s)):
        with contextlib.suppress(OSError):  # removed meanwhile: seen next time
            st = file.stat()
            found.append((str(file), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(found)


async def _keyring_watcher(
    s: PublisherSettings, core: PublisherCore, market: Market, seen: KeyringFiles
) -> None:
    """Reloads the keyring when its files change (seen: as they were when it was
    loaded); a file that cannot be read keeps the keyring in use (and is tried
    again) rather than trusting nobody."""
    while True:
        await asyncio.sleep(s.keyring_reload_seconds)
        now = keyring_state(s)
        if now == seen:
            continue
        try:
            keys = load_keyring(s)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong, the old keyring stays
            log.warning("keyring changed but not reloaded, the one in use stays: %s", exc)
            continue
        market.keys = keys
        core.default_endorser = default_endorser(s, keys)  # the Secret may name another
        seen = now
        log.info("keyring reloaded: %d keys, %d endorsers revoked",
                 len(keys.keys), len(keys.revoked_endorsers))  # fmt: skip


def default_endorser(s: PublisherSettings, keys: Keyring) -> str:
    """The setting, else the one endorser this publisher can sign for."""
    if s.default_endorser:
        return s.default_endorser
    mine = keys.endorsers()
    return mine[0] if len(mine) == 1 else ""


def glance_publisher(clouds: Path | None) -> GlancePublisher | None:
    if clouds is None or not clouds.is_file():
        log.warning("no clouds.yaml: Glance publishing is off")
        return None
    publisher = GlancePublisher(clouds)
    log.info("clouds.yaml %s names %s", clouds, ", ".join(publisher.clouds()) or "no cloud")
    return publisher


async def sweep_once(core: PublisherCore, retire: str, now: datetime | None = None) -> None:
    """Marks expired entries; their artifacts' Glance images are retired as configured."""
    if core.market is None:
        return
    expired = await core.market.sweep(now=now)
    if not expired or retire == "none" or core.glance is None:
        return
    artifacts = {s.entry.artifact_id for s in expired}
    for pub in await core.list_publications():
        for r in pub.results:
            if r.kind == "glance" and r.image_id and r.artifact_id in artifacts:
                # One image failing must not keep the others from being retired.
                try:
                    await core.glance.retire(r.cloud, r.region or None, r.image_id, retire)
                except NotFound:
                    continue  # gone already (rotation deleted it): nothing to retire
                except KilnError as exc:
                    log.warning("retiring image %s in %s failed: %s", r.image_id, r.cloud, exc)
                    continue
                await core.events.publish(
                    "image.retired",
                    r.image_id,
                    {"image_id": r.image_id, "cloud": r.cloud, "region": r.region,
                     "name": r.image_name, "how": retire, "why": "entry expired"},
                )  # fmt: skip


async def _sweeper(core: PublisherCore, every: float, retire: str) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await sweep_once(core, retire)
        except Exception:
            log.exception("marketplace sweep failed")


async def build(settings: PublisherSettings) -> PublisherApp:
    held = Held()
    async with held.unwound_on_failure():
        return await _build(settings, held)


def public_url(settings: PublisherSettings, scheme: str, port: int) -> str:
    """Where readers reach the marketplace: the setting, else the address it
    serves on ("" when that is a wildcard: no reader can use it)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        log.warning("KILN_PUBLISHER_PUBLIC_URL is not set and the marketplace listens on %s:"
                    " entries carry storage URLs alone, which expire", host or "*")  # fmt: skip
        return ""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


async def _build(settings: PublisherSettings, held: Held) -> PublisherApp:
    token = settings.token.get_secret_value() if settings.token else None
    serve_with(token, settings.tls_ca_file, held)
    nc = await jetstream.connect(settings.nats_url, default_source("kiln-publisher"))
    held.close_with(nc.drain)
    js = nc.jetstream()
    await jetstream.mapped(lambda: ensure_stream(js, replicas=settings.nats_replicas))
    source = default_source("kiln-publisher")
    events = JetStreamPublisher(nc, js, source, Outbox(settings.outbox_dir, source))
    held.close_with(events.close)
    storage = AsyncStorageClient(settings.storage)
    held.close_with(storage.close)
    builder = AsyncBuilderClient(settings.builder) if settings.builder else None
    # The builder serves the Channels API on its own address, to the same token.
    channels = AsyncChannelsClient(settings.builder) if settings.builder else None
    if builder is not None and channels is not None:
        held.close_with(builder.close)
        held.close_with(channels.close)
    else:
        log.warning("no builder address (KILN_PUBLISHER_BUILDER): builds' recipes are unknown")
    if settings.local_endorser:
        local_endorser(settings)
    seen = keyring_state(settings)  # before loading: a change meanwhile is reloaded
    keys = load_keyring(settings)
    market = (
        Market(js, keys, events, replicas=settings.nats_replicas) if settings.marketplace else None
    )
    core = PublisherCore(
        storage,
        js,
        events,
        glance_publisher(settings.clouds_file()),
        market,
        builder=builder,
        channels=channels,
        default_endorser=default_endorser(settings, keys),
        url_seconds=settings.url_seconds,
        replicas=settings.nats_replicas,
        tenants=TenantPolicy(settings.tenants),
    )

    identities = guard(settings, js)
    await identities.prime()

    def register(server: grpc.aio.Server) -> None:
        publisher_pb2_grpc.add_PublisherServicer_to_server(PublisherServicer(core), server)
        identities.register(server)

    grpc_server, tls = service_server(settings, [SERVICE_NAME], register, identities.interceptors)
    app = PublisherApp(settings, core, grpc_server, held)
    if market is not None:
        # Entries outlive storage's URLs: the catalogue's links get a fresh one.
        sboms = StoredSboms(storage)  # an entry's page lists its signed SBOM's packages
        http = make_app(
            market, core.locate, identities.http(PUBLIC_ROUTES), sboms, settings.public_url
        )
        app.http_port = await held.http(
            http, settings.http_host, settings.http_port, tls.http() if tls else None
        )
        scheme = "https" if tls else "http"
        log.info("marketplace on %s://%s:%d/", scheme, settings.http_host, app.http_port)
        core.download_base = public_url(settings, scheme, app.http_port)
    jobs: list[Coroutine[Any, Any, None]] = [
        _sweeper(core, settings.sweep_interval_seconds, settings.retire_action)
    ]
    if settings.auto_publish:
        jobs.append(autopublish.run(core, js))
        jobs.append(channelpublish.run(core, js))
    # Revocation is not optional: a revoked build's images must not stay in use.
    jobs.append(revoke.run(core, js))
    if market is not None and settings.keyring_reload_seconds:
        jobs.append(_keyring_watcher(settings, core, market, seen))
    held.run(*jobs)
    return app
