"""The bearer token a client sends: given to the client, else the process's
(a service sets its own at start: use_token), else KILN_TOKEN, else the token
`kiln up` keeps for its stack (KILN_HOME/token); none: calls carry no token,
which a service with `auth: off` does not ask for."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from kiln_common.home import kiln_home

TOKEN_FILE = "token"
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


def save_token(value: str, home: Path) -> Path:
    """Keeps a token for the CLI, readable by its owner only."""
    path = home / TOKEN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return path


if TYPE_CHECKING:  # generic in the stubs only
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _Bearer(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, value: str) -> None:
        self._metadata = ("authorization", f"Bearer {value}")

    def _with_token(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadata)
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request_iterator)


def interceptors(value: str) -> list[Any]:
    return [_Bearer(value)] if value else []
