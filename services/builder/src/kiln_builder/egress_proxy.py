"""The proxy that enforces the egress policy (egress.py) on every connection a
build's own fetches make: one per build, on the builder's loopback.

- CONNECT host:port (https for apt and urllib, and the appliance's relays): the
  name is resolved once, every address checked, and the tunnel opened to a
  checked address.
- Plain http requests in absolute form (apt, urllib): each request is checked
  the same way and sent, in origin form, to a checked address. Connections are
  kept alive (apt fetches hundreds of files from one mirror; a new connection
  for each made a bootstrap markedly slower), but a connection upstream only
  ever carries requests for the host it was opened to: a pipelined request
  for another host is checked and gets a connection of its own. Responses are
  relayed by their framing (Content-Length, chunked, or to the close).

A refusal is answered 403 with the reason, which the builder puts in the
build's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from urllib.parse import urlsplit

from kiln_builder.egress import EgressPolicy, EgressRefused

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64  # a build's apt and relays open a few; more is a flood
HEAD_LIMIT = 64 << 10  # a request or response head larger than this is refused
IDLE_SECONDS = 300.0  # a connection with no byte either way for this long is closed
MAX_BODY = 1 << 20  # apt and urllib send none; a request body is bounded
CHUNK = 1 << 16
_HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "proxy-authorization", "te")

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class BadRequest(ValueError):
    """A request the proxy does not relay (answered 400)."""


class EgressProxy:
    """See the module: CONNECT tunnels and absolute-form http requests, each to
    an address the policy checked."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy
        self.refusals: list[str] = []
        self.served = 0  # connections made upstream
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> EgressProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=HEAD_LIMIT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._slots.locked():
                return await _answer(writer, 503, "too many connections through the egress proxy")
            async with self._slots:
                await self._client(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError):  # fmt: skip
            pass  # a client or server gone mid-way, or a garbled response: nothing to answer
        except Exception:  # a bug here must not leave the client waiting
            log.exception("the egress proxy failed on a request")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _open(self, host: str, port: int, writer: asyncio.StreamWriter) -> Stream | None:
        """A connection to a checked address of host, or None (answered)."""
        try:
            addresses = await self.policy.addresses(host, port)
        except EgressRefused as exc:
            self.refusals.append(str(exc))
            log.warning("%s", exc)
            await _answer(writer, 403, str(exc))
            return None
        upstream = await _connect(addresses, port)
        if upstream is None:
            await _answer(writer, 502, f"{host}:{port} does not answer")
            return None
        self.served += 1
        return upstream

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _head(reader)
        if head is None:
            return
        if head[0].startswith("CONNECT "):
            return await self._tunnel(head, reader, writer)
        upstream: tuple[str, int, asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while head is not None:
                try:
                    request = _Request.parse(head)
                except BadRequest as exc:
                    return await _answer(writer, 400, f"a proxy request Kiln does not relay: {exc}")
                if upstream is None or upstream[:2] != (request.host, request.port):
                    if upstream is not None:
                        upstream[3].close()
                    opened = await self._open(request.host, request.port, writer)
                    if opened is None:
                        return
                    upstream = (request.host, request.port, *opened)
                _, _, up_reader, up_writer = upstream
                up_writer.write(request.forwarded())
                if request.body:
                    up_writer.write(await reader.readexactly(request.body))
                await up_writer.drain()
                if not await _response(up_reader, writer, request.method) or request.close:
                    return
                head = await _head(reader)
        finally:
            if upstream is not None:
                upstream[3].close()

    async def _tunnel(
        self, head: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            host, port = _authority(head[0].split(" ")[1])
        except (BadRequest, IndexError) as exc:
            return await _answer(writer, 400, f"a CONNECT Kiln does not relay: {exc}")
        opened = await self._open(host, port, writer)
        if opened is None:
            return
        up_reader, up_writer = opened
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()


class _Request:
    def __init__(self, method: str, host: str, port: int, path: str, version: str,
                 headers: list[str], body: int, close: bool) -> None:  # fmt: skip
        self.method, self.host, self.port, self.path = method, host, port, path
        self.version, self.headers, self.body, self.close = version, headers, body, close

    @classmethod
    def parse(cls, head: list[str]) -> _Request:
        try:
            method, target, version = head[0].split(" ")
        except ValueError:
            raise BadRequest(head[0][:200]) from None
        parts = urlsplit(target)
        try:
            port = parts.port or 80
        except ValueError:
            raise BadRequest(f"port of {target[:200]}") from None
        if parts.scheme != "http" or not parts.hostname or version not in ("HTTP/1.0", "HTTP/1.1"):
            raise BadRequest(target[:200])
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fields = _fields(head[1:])
        if "transfer-encoding" in fields:
            raise BadRequest("a chunked request body")
        length = fields.get("content-length", "0").strip()
        if not length.isdigit() or int(length) > MAX_BODY:
            raise BadRequest(f"a body of {length[:20]} bytes")
        close = "close" in fields.get("connection", "").lower() or version == "HTTP/1.0"
        kept = [h for h in head[1:] if h and h.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
        if "host" not in fields:
            kept.append(f"Host: {parts.hostname}" + (f":{port}" if port != 80 else ""))
        return cls(method, parts.hostname, port, path, version, kept, int(length), close)

    def forwarded(self) -> bytes:
        """The request in origin form, without the client's hop-by-hop headers."""
        ending = ["Connection: close"] if self.close else []
        lines = [f"{self.method} {self.path} {self.version}", *self.headers, *ending, "", ""]
        return "\r\n".join(lines).encode("latin-1")


def _authority(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise BadRequest(target[:200])
    return host.strip("[]"), int(port)


def _fields(lines: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            key = name.strip().lower()
            found[key] = f"{found[key]}, {value.strip()}" if key in found else value.strip()
    return found


async def _head(reader: asyncio.StreamReader) -> list[str] | None:
    """The next request or response head's lines; None at a clean end."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_SECONDS)
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    return raw.decode("latin-1").split("\r\n")[:-2]


async def _response(
    up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str
) -> bool:
    """Relays one response (and any 1xx before it); whether the connection can
    carry another request."""
    while True:
        head = await _head(up_reader)
        if head is None:
            raise asyncio.IncompleteReadError(b"", None)
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        status_words = head[0].split(" ", 2)
        code = int(status_words[1]) if len(status_words) > 1 and status_words[1].isdigit() else 0
        if not 100 <= code < 200:
            break
    fields = _fields(head[1:])
    reusable = "close" not in fields.get("connection", "").lower() and head[0].startswith(
        "HTTP/1.1"
    )
    if method == "HEAD" or code in (204, 304):
        pass
    elif "chunked" in fields.get("transfer-encoding", "").lower():
        await _chunks(up_reader, writer)
    elif fields.get("content-length", "").strip().isdigit():
        await _exactly(up_reader, writer, int(fields["content-length"].strip()))
    else:
        await _pump(up_reader, writer)  # to the close: the connection ends with it
        return False
    await writer.drain()
    return reusable


async def _exactly(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: int) -> None:
    while count > 0:
        chunk = await asyncio.wait_for(src.read(min(count, CHUNK)), IDLE_SECONDS)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", count)
        dst.write(chunk)
        await dst.drain()
        count -= len(chunk)


async def _chunks(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """A chunked body, relayed as it is, its end found by its framing."""
    while True:
        line = await asyncio.wait_for(src.readuntil(b"\r\n"), IDLE_SECONDS)
        dst.write(line)
        size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while (trailer := await asyncio.wait_for(src.readuntil(b"\r\n"), IDLE_SECONDS)) != (
                b"\r\n"
            ):
                dst.write(trailer)
            dst.write(b"\r\n")
            return
        await _exactly(src, dst, size + 2)  # the data and its CRLF


async def _connect(addresses: Sequence[str], port: int) -> Stream | None:
    for address in addresses:  # each one checked, none resolved again
        with contextlib.suppress(OSError, TimeoutError):
            return await asyncio.wait_for(asyncio.open_connection(address, port), 30)
    return None


async def _answer(writer: asyncio.StreamWriter, status: int, why: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Busy"}[status]
    body = (why + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nX-Kiln-Egress: refused\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copies src to dst until src ends (or stays silent IDLE_SECONDS)."""
    while chunk := await asyncio.wait_for(src.read(CHUNK), IDLE_SECONDS):
        dst.write(chunk)
        await dst.drain()
    if dst.can_write_eof():
        dst.write_eof()


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """A tunnel: bytes both ways until the server is done (or both sides are idle)."""
    upload = asyncio.ensure_future(_pump(reader, up_writer))
    try:
        await _pump(up_reader, writer)  # the server's side decides the end
    finally:
        upload.cancel()
        with contextlib.suppress(BaseException):
            await upload
