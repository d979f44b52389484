"""The bearer token a client sends: given to the client, else the process's
(a service sets its own at start: use_token), else KILN_TOKEN, else the token
`kiln up` keeps for its stack (KILN_HOME/token); none: calls carry no token,
which a service with `auth: off` does not ask for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from kiln_common.home import TOKEN_FILE, kiln_home

_process_token = ""


def use_token(token: str) -> None:
    """The token every client of this process sends unless given another."""
    global _process_token
    _process_token = token


def token(explicit: str = "", home: Path | None = None) -> str:
    if explicit:
        return explicit
    if _process_token:
        return _process_token
    if os.environ.get("KILN_TOKEN"):
        return os.environ["KILN_TOKEN"].strip()
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
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
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
