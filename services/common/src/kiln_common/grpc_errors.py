"""The one place that maps Kiln's domain errors to gRPC status codes."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from kiln_common import errors

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.KilnError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}


def status_for(exc: errors.KilnError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    if isinstance(exc, errors.KilnError):
        await context.abort(status_for(exc), str(exc))
    # Never send str() of an unexpected error: it may carry paths or secrets.
    ref = uuid.uuid4().hex[:12]
    log.exception("internal error (ref %s)", ref, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref})")


F = TypeVar("F", bound=Callable[..., Any])


def maps_errors(method: F) -> F:
    """Wraps a servicer method (coroutine or async generator) so domain errors
    become their status code and anything else becomes INTERNAL with a reference."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                if _is_abort(exc):
                    raise
                await _abort(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await method(self, request, context)
        except Exception as exc:
            if _is_abort(exc):
                raise
            await _abort(context, exc)

    return unary  # type: ignore[return-value]


def _is_abort(exc: BaseException) -> bool:
    # context.abort() raises this to unwind; it must pass through untouched.
    return isinstance(exc, grpc.aio.AbortError)


C = TypeVar("C", bound=type)


def servicer(cls: C) -> C:
    """Class decorator: applies maps_errors to every public RPC method."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or not callable(member):
            continue
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            setattr(cls, name, maps_errors(member))
    return cls
