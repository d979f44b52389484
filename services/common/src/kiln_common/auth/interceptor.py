"""The one gRPC server interceptor every Kiln service installs when its
settings require identities: the call's bearer token becomes an Identity
(kiln_common.auth.authenticator), the method's verb (kiln_common.auth.policy)
is checked against its role, and the handler runs with caller() set. A call
without a good token is UNAUTHENTICATED, one its role may not make
PERMISSION_DENIED, and neither reaches the servicer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import grpc

from kiln_common.auth.authenticator import Authenticator
from kiln_common.auth.identity import ACTING_FOR_HEADER, Identity, Role, Verb, acting_as, allowed
from kiln_common.auth.policy import OPEN, required
from kiln_common.auth.static import check_tenant
from kiln_common.errors import Internal, KilnError, PermissionDenied
from kiln_common.grpc_errors import status_for

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # generic in the stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _ServerInterceptor = grpc.aio.ServerInterceptor


class AuthInterceptor(_ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        verb = required(details.method)
        if handler is None or verb == OPEN:
            return handler
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        try:
            identity = await self._check(details.method, verb, metadata.get("authorization", ""))
            identity = _acting(identity, metadata.get(ACTING_FOR_HEADER, ""))
        except KilnError as exc:
            log.info("refused %s: %s", details.method, exc)
            return _wrapped(handler, _refusal(exc))
        except Exception:  # never a traceback's text to the caller
            ref = uuid.uuid4().hex[:12]
            log.exception("checking the caller of %s failed (ref %s)", details.method, ref)
            return _wrapped(handler, _refusal(Internal(f"internal error (ref {ref})")))
        return _wrapped(handler, _as(identity))

    async def _check(self, method: str, verb: Verb | str | None, authorization: str) -> Identity:
        identity = await self.authenticator.authenticate(authorization)
        if not isinstance(verb, Verb):
            raise PermissionDenied(f"{method} is not a method Kiln serves")
        if not allowed(identity, verb):
            raise PermissionDenied(f"the {identity.role} role may not {verb} ({method})")
        return identity


def _acting(identity: Identity, tenant: str) -> Identity:
    """The service identity, acting for the tenant a call names; nobody else
    may name one (a tenant's caller is its own tenant's, always)."""
    if not tenant:
        return identity
    if identity.role is not Role.SERVICE:
        raise PermissionDenied("only Kiln's services act for a tenant")
    return replace(identity, acting_for=check_tenant(tenant))


Behaviour = Callable[..., Any]
Wrap = Callable[[Behaviour, bool], Behaviour]


def _as(identity: Identity) -> Wrap:
    """Runs a behaviour with caller() giving identity."""

    def wrap(behaviour: Behaviour, streaming: bool) -> Behaviour:
        if streaming:

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                with acting_as(identity):
                    async for item in behaviour(request, context):
                        yield item

            return stream

        async def unary(request: Any, context: Any) -> Any:
            with acting_as(identity):
                return await behaviour(request, context)

        return unary

    return wrap


def _refusal(exc: KilnError) -> Wrap:
    """A behaviour that ends the call with exc's status, having done nothing."""

    def wrap(behaviour: Behaviour, streaming: bool) -> Behaviour:
        if streaming:

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                await context.abort(status_for(exc), str(exc))
                yield  # an async generator, as the handler it stands for

            return stream

        async def unary(request: Any, context: Any) -> Any:
            await context.abort(status_for(exc), str(exc))

        return unary

    return wrap


def _wrapped(handler: Handler, wrap: Wrap) -> Handler:
    """handler with its behaviour wrapped, of the same kind."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
    )
    for name, make, streaming in kinds:
        behaviour = getattr(handler, name)
        if behaviour is not None:
            return make(
                wrap(behaviour, streaming),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
