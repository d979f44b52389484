"""The bearer token a client sends: given to the client, else the process's
(a service sets its own at start: serve_with), else KILN_TOKEN, else the
configuration file's context (kiln_client.config), else the token `kiln up`
keeps for its stack (KILN_HOME/token); none: calls carry no token,
which a service with `auth: off` does not ask for."""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from kiln_client import config
from kiln_common.auth.identity import ACTING_FOR_HEADER
from kiln_common.errors import InvalidArgument
from kiln_common.held import Held
from kiln_common.home import TOKEN_FILE, Stack, kiln_home

_process_token = ""
_process_ca: Path | None = None
# The tenant a service's calls are made for (a build's, a publication's):
# read when each call starts, so it follows the task that makes it; else the
# process's (a bake's, use_tenant).
_acting_for: contextvars.ContextVar[str] = contextvars.ContextVar("kiln_acting_for", default="")
_process_tenant = ""


def acting_tenant() -> str:
    """The tenant calls made here act for ("" for none)."""
    return _acting_for.get() or _process_tenant


def use_tenant(tenant: str) -> None:
    """The tenant every call of this process acts for unless told another."""
    global _process_tenant
    _process_tenant = tenant


@contextmanager
def acting_for(tenant: str) -> Iterator[None]:
    """Calls made inside act for tenant: the server sees and checks them as
    that tenant's (only a service's token may). "" acts for nobody."""
    reset = _acting_for.set(tenant)
    try:
        yield
    finally:
        _acting_for.reset(reset)


def use_token(token: str) -> None:
    """The token every client of this process sends unless given another."""
    global _process_token
    _process_token = token


def serve_with(secret: str | None, ca: Path | None, held: Held) -> None:
    """A service's own token and the CA it trusts (None: none): what every
    client of its process sends and verifies servers with, set before any
    client is made and taken back when the service stops (several services
    may run, one after another, in one process)."""
    global _process_token, _process_ca
    previous = _process_token, _process_ca
    _process_token = secret if secret is not None else _process_token
    _process_ca = ca if ca is not None else _process_ca

    async def restore() -> None:
        global _process_token, _process_ca
        _process_token, _process_ca = previous

    held.close_with(restore)


def ca_file() -> Path | None:
    """The CA servers must chain to: the process's (a service's tls_ca_file),
    else KILN_CA_FILE, else that of the `kiln up --tls` stack in KILN_HOME;
    None: plain connections."""
    if _process_ca is not None:
        return _process_ca
    named = os.environ.get("KILN_CA_FILE", "").strip() or config.value("ca_file")
    if named:
        return Path(named)
    if config.current().name:
        return None  # a context is current: never the local stack's CA
    stack = Stack.load(kiln_home())  # a `kiln up --tls` stack's own CA
    return Path(stack.tls_ca) if stack is not None and stack.tls_ca else None


def channel_credentials() -> grpc.ChannelCredentials | None:
    """TLS credentials that trust ca_file() only, or None for plain."""
    ca = ca_file()
    if ca is None:
        return None
    try:
        pem = ca.read_bytes()
    except OSError as exc:
        if _process_ca is not None:
            raise  # a service's own setting: not its caller's bad input
        # The user's (--ca-file, KILN_CA_FILE, a context's ca_file): bad input,
        # said as such rather than as an errno.
        raise InvalidArgument(f"the CA file {ca}: {exc.strerror}") from None
    return grpc.ssl_channel_credentials(root_certificates=pem)


def token(explicit: str = "", home: Path | None = None) -> str:
    if explicit:
        return explicit
    if _process_token:
        return _process_token
    if os.environ.get("KILN_TOKEN"):
        return os.environ["KILN_TOKEN"].strip()
    configured = config.value("token")
    if configured or config.current().name:
        return configured  # a context is current: never the local stack's admin token
    kept = (home or kiln_home()) / TOKEN_FILE
    return kept.read_text().strip() if kept.is_file() else ""


if TYPE_CHECKING:  # generic in the stubs only
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor


class _Bearer:
    """Adds `authorization: Bearer <token>` to a call's metadata."""

    def __init__(self, value: str) -> None:
        self._header = ("authorization", f"Bearer {value}")

    def _with_token(self, details: Any) -> Any:
        headers = [self._header]
        if tenant := acting_tenant():
            headers.append((ACTING_FOR_HEADER, tenant))
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *headers)
        return details._replace(metadata=metadata)


# grpc.aio files each interceptor under the first of the four kinds it is
# (an if/elif on isinstance): one object per kind, or streams go without.
class _UnaryUnary(_Bearer, _UnaryUnaryBase):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)


class _UnaryStream(_Bearer, _UnaryStreamBase):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)


class _StreamUnary(_Bearer, _StreamUnaryBase):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)


class _StreamStream(_Bearer, _StreamStreamBase):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)


def interceptors(value: str) -> list[Any]:
    """The interceptors of a channel whose every call carries the token."""
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    return [kind(value) for kind in kinds] if value else []
