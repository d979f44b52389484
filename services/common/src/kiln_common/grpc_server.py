"""gRPC server bootstrap shared by every Kiln service: standard health,
graceful shutdown on SIGTERM/SIGINT, and large-message options."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from kiln_common.held import Held
from kiln_common.tls import ServerTls

log = logging.getLogger(__name__)

# Data travels in chunks of CHUNK_SIZE: large enough that per-message overhead
# is small, with room for framing under MAX_MESSAGE.
CHUNK_SIZE = 4 * 1024 * 1024
MAX_MESSAGE = 8 * 1024 * 1024
CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
)

Register = Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A started grpc.aio server with health; stop() is graceful."""

    def __init__(
        self,
        bind: str,
        service_names: Sequence[str],
        register: Register,
        interceptors: Sequence[Any] = (),  # grpc.aio.ServerInterceptor: the caller's identity
        tls: ServerTls | None = None,
        health_bind: str = "",
    ) -> None:
        self._bind = bind
        self._tls = tls
        # A plain server answering only health, for probes that speak no TLS
        # (the kubelet's gRPC probes): the API itself stays behind TLS.
        self._health_bind = health_bind
        self._health_server: grpc.aio.Server | None = None
        self._names = list(service_names)
        self._register = register
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=interceptors)
        self.health = HealthServicer()
        self.port = 0

    async def start(self) -> int:
        self._register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if self._tls is not None:
            self.port = self.server.add_secure_port(self._bind, self._tls.grpc())
        else:
            self.port = self.server.add_insecure_port(self._bind)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {self._bind}")
        await self.server.start()
        if self._health_bind:
            await self._start_health()
        for name in ["", *self._names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC serving on port %d: %s", self.port, ", ".join(self._names))
        return self.port

    async def _start_health(self) -> None:
        self._health_server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        if self._health_server.add_insecure_port(self._health_bind) == 0:
            raise OSError(f"cannot bind gRPC health to {self._health_bind}")
        await self._health_server.start()

    async def stop(self, grace: float) -> None:
        # Tell load balancers first, then let in-flight calls finish.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)


class ServedSettings(Protocol):
    """What a service's settings say of where and how its gRPC is served."""

    @property
    def grpc_bind(self) -> str: ...
    @property
    def health_bind(self) -> str: ...
    @property
    def tls_cert_file(self) -> Path | None: ...
    @property
    def tls_key_file(self) -> Path | None: ...


def service_server(
    settings: ServedSettings, names: Sequence[str], register: Register,
    interceptors: Sequence[Any] = (),
) -> tuple[GrpcServer, ServerTls | None]:  # fmt: skip
    """The service's gRPC server as its settings say (TLS, a plain health
    port), and its TLS, which its HTTP server (if any) serves too."""
    tls = ServerTls.of(settings.tls_cert_file, settings.tls_key_file)
    server = GrpcServer(
        settings.grpc_bind, names, register, interceptors, tls, settings.health_bind
    )
    return server, tls


async def serve_until_signalled(
    server: GrpcServer,
    grace: float,
    on_stop: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Runs until SIGTERM or SIGINT, then shuts down gracefully and runs on_stop
    callbacks (closing NATS, HTTP servers) in order."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await server.start()
        await stopping.wait()
        log.info("signal received: shutting down (grace %.0fs)", grace)
    finally:
        with contextlib.suppress(Exception):
            await server.stop(grace)
        for callback in on_stop:
            try:
                await callback()
            except Exception:
                log.exception("error during shutdown")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


class ServiceSettings(Protocol):
    @property
    def log_level(self) -> str: ...
    @property
    def shutdown_grace(self) -> float: ...
    def public(self) -> dict[str, Any]: ...


S = TypeVar("S", bound=ServiceSettings)


class ServiceApp(Protocol):
    """What a service's build() returns: its gRPC server, and what it holds
    (released in reverse at stop)."""

    @property
    def grpc(self) -> GrpcServer: ...
    @property
    def held(self) -> Held: ...


def service_main(
    name: str,
    settings_type: Callable[[], S],
    build: Callable[[S], Awaitable[ServiceApp]],
) -> int:
    """The body of a service's `main()`: settings from the environment (a bad
    one is a one-line error, exit 2), logging, then the service until SIGTERM
    (a start that fails with a KilnError exits 1)."""
    from nats.errors import Error as NatsError
    from pydantic import ValidationError

    from kiln_common.errors import KilnError
    from kiln_common.logs import setup_logging
    from kiln_common.settings import settings_error

    try:
        settings = settings_type()
    except ValidationError as exc:
        print(f"{name}: bad settings:\n{settings_error(exc)}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, name)
    log.info("settings: %s", settings.public())

    async def serve() -> None:
        app = await build(settings)
        await serve_until_signalled(app.grpc, settings.shutdown_grace, [app.held.aclose])

    try:
        asyncio.run(serve())
    except (KilnError, OSError, NatsError) as exc:  # NATS or a port away, say
        log.error("cannot start: %s", exc)
        return 1
    return 0
