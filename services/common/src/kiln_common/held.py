"""What a service holds while it runs (connections, HTTP servers, background
tasks), released in reverse order on stop, or at once if its start fails
half-way: one AsyncExitStack per service, with the few ways every service's
build() adds to it.

    held = Held()
    async with held.unwound_on_failure():
        nc = await jetstream.connect(...)
        held.close_with(nc.drain)
        port = await held.http(app, "0.0.0.0", 8080)
        held.run(janitor(core))
    ...
    await held.aclose()  # at stop: tasks cancelled, servers and connections closed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # aiohttp only for the services that serve HTTP
    from aiohttp import web

log = logging.getLogger(__name__)


class Held(contextlib.AsyncExitStack):
    def close_with(self, close: Callable[[], Awaitable[object]]) -> None:
        """close() at stop; a failure there is logged, and the rest still closes."""

        async def quietly() -> None:
            try:
                await close()
            except Exception as exc:  # noqa: BLE001 - stopping goes on (NATS may be gone already)
                name = getattr(close, "__qualname__", close)
                log.warning("while stopping, %s failed: %s", name, exc or type(exc).__name__)

        self.push_async_callback(quietly)

    def run(self, *jobs: Coroutine[Any, Any, None]) -> list[asyncio.Task[None]]:
        """Background tasks, cancelled and awaited at stop."""
        tasks = [asyncio.create_task(job) for job in jobs]

        async def stop() -> None:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

        self.close_with(stop)
        return tasks

    async def http(
        self, app: web.Application, host: str, port: int, tls: ssl.SSLContext | None = None
    ) -> int:
        """Serves app on host:port (0: a free port) until stop, over TLS if
        given a context; the bound port."""
        from aiohttp import web

        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.close_with(runner.cleanup)
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        addresses = runner.addresses  # public API: (host, port, ...) of each socket
        return int(addresses[0][1]) if addresses else port

    @contextlib.asynccontextmanager
    async def unwound_on_failure(self) -> AsyncIterator[Held]:
        """For build(): what was taken so far is released if the start fails."""
        try:
            yield self
        except BaseException:
            await self.aclose()
            raise
