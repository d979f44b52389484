"""What every client call shares: a channel with Kiln's message limits, a
failed call turned into the domain error it stands for, the one retry
policy around it, and pages turned into one iterator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from kiln_client import credentials
from kiln_common.grpc_errors import from_rpc
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_common.retry import RetryPolicy

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item of a page

# Keepalive pings notice a dead connection while a long stream is quiet
# (a build's watch), instead of waiting on it for ever.
OPTIONS = (
    *CHANNEL_OPTIONS,
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A service that restarts is reached again within a couple of seconds: by
    # default gRPC backs off reconnecting for up to 120 s, and channels to one
    # address share that state, so every new client failed fast meanwhile.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
# About half a minute of tries: long enough for a service (or NATS behind it)
# that is being restarted to come back.
DEFAULT_POLICY = RetryPolicy(attempts=10)


def channel(address: str, token: str = "") -> grpc.aio.Channel:
    """A channel whose calls carry the bearer token (credentials.token), over
    TLS that verifies the server when a CA is known (credentials.ca_file)."""
    bearer = credentials.interceptors(credentials.token(token))
    tls = credentials.channel_credentials()
    if tls is not None:
        return grpc.aio.secure_channel(address, tls, options=OPTIONS, interceptors=bearer)
    return grpc.aio.insecure_channel(address, options=OPTIONS, interceptors=bearer)


async def mapped(call: Callable[[], Awaitable[T]]) -> T:
    """The call's result; a failed call raises its domain error."""
    try:
        return await call()
    except grpc.RpcError as exc:
        raise from_rpc(exc) from None


async def unary(policy: RetryPolicy, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """A call retried by the policy, its failure as a domain error."""
    return await policy.acall(lambda: mapped(call), what)


async def pages(
    fetch: Callable[[str], Awaitable[tuple[list[I], str]]],
) -> AsyncIterator[I]:
    """Every item of every page; fetch(token) gives a page and the next token."""
    token = ""
    while True:
        items, token = await fetch(token)
        for item in items:
            yield item
        if not token:
            return
