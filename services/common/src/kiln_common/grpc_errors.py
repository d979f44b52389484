"""The one place that maps Kiln's domain errors to gRPC status codes, and
back: a server raises a domain error and the client that called it gets the
same error type again (kiln_client does that with from_rpc)."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from kiln_common import errors
from kiln_common.jetstream import translate

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.KilnError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}
ERROR_OF: dict[grpc.StatusCode, type[errors.KilnError]] = {
    code: cls for cls, code in STATUS_OF.items()
} | {
    # Codes no core raises, as the nearest domain error a caller handles.
    grpc.StatusCode.ABORTED: errors.Unavailable,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
}


def status_for(exc: errors.KilnError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def from_rpc(exc: grpc.RpcError) -> errors.KilnError:
    """The domain error a failed call stands for; its message is the
    service's. A call that never reached a service (connection refused,
    dropped) is UNAVAILABLE, so it is Unavailable and worth a retry."""
    has_status = callable(getattr(exc, "code", None))
    code = exc.code() if has_status else None
    details = (exc.details() if has_status else None) or str(exc)
    cls = ERROR_OF.get(code, errors.Internal) if code is not None else errors.Internal
    error = cls(details)
    error.__cause__ = exc
    return error


def code_name(exc: errors.KilnError) -> str:
    """The status name a client shows with a domain error: NOT_FOUND."""
    return str(status_for(exc).name)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    # NATS failures that reach a servicer are Kiln errors too (NATS away is
    # UNAVAILABLE, so clients retry), as the storage backends map S3's.
    error = translate(exc)
    if error is not None:
        await context.abort(status_for(error), str(error))
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
