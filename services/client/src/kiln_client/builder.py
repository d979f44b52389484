"""Clients of the Builder service: AsyncBuilderClient (the implementation)
and BuilderClient (the same, blocking). A submit without an idempotency key
gets one, so a submit retried after a lost reply queues one build; a watch
that loses the service (a pod restarting, NATS away) resumes after the last
update it saw."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_client import _rpc, discovery, wire
from kiln_client._sync import LoopThread
from kiln_common.builds import Build, BuildState, BuildUpdate
from kiln_common.grpc_errors import from_rpc
from kiln_common.retry import RetryPolicy
from kiln_recipe.source import RecipeSource, Validation

MAX_PAGE = 500
# A watch outlives a NATS or builder restart: it keeps trying for ten minutes
# after its last update before it gives up.
WATCH_POLICY = RetryPolicy(attempts=1000, initial=0.5, maximum=5.0, deadline=600.0)


class AsyncBuilderClient:
    def __init__(
        self,
        address: str = "",
        *,
        policy: RetryPolicy = _rpc.DEFAULT_POLICY,
        watch_policy: RetryPolicy = WATCH_POLICY,
        token: str = "",  # default: credentials.token()
    ) -> None:
        self.address = discovery.address("builder", address)
        self.policy = policy
        self.watch_policy = watch_policy
        self._channel = _rpc.channel(self.address, token)
        self._stub = pb_grpc.BuilderStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncBuilderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(
        self,
        recipe: RecipeSource,
        *,
        idempotency_key: str = "",
        no_cache: bool = False,
        skip_boot_test: bool = False,
    ) -> Build:
        request = pb.SubmitBuildRequest(
            recipe=wire.recipe_message(recipe),
            idempotency_key=idempotency_key or f"auto-{uuid.uuid4().hex}",
            no_cache=no_cache,
            skip_boot_test=skip_boot_test,
        )
        reply = await _rpc.unary(self.policy, "submit", lambda: self._stub.SubmitBuild(request))
        return wire.build_of(reply)

    async def validate(self, recipe: RecipeSource) -> Validation:
        request = pb.ValidateRecipeRequest(recipe=wire.recipe_message(recipe))
        reply = await _rpc.unary(
            self.policy, "validate", lambda: self._stub.ValidateRecipe(request)
        )
        return wire.validation_of(reply)

    async def get(self, build_id: str) -> Build:
        request = pb.GetBuildRequest(id=build_id)
        reply = await _rpc.unary(self.policy, "get", lambda: self._stub.GetBuild(request))
        return wire.build_of(reply)

    async def recipe(self, build_id: str) -> RecipeSource:
        """The recipe the build was submitted with (NotFound once not kept)."""
        request = pb.GetBuildRequest(id=build_id)
        reply = await _rpc.unary(self.policy, "recipe", lambda: self._stub.GetBuildRecipe(request))
        return wire.recipe_of(reply)

    async def cancel(self, build_id: str) -> Build:
        request = pb.CancelBuildRequest(id=build_id)
        reply = await _rpc.unary(self.policy, "cancel", lambda: self._stub.CancelBuild(request))
        return wire.build_of(reply)

    def list(
        self,
        state: BuildState = BuildState.UNSPECIFIED,
        name: str = "",
        page_size: int = 50,
    ) -> AsyncIterator[Build]:
        """Builds, newest first, page after page."""

        async def page(token: str) -> tuple[builtins.list[Build], str]:
            request = pb.ListBuildsRequest(
                state=pb.BuildState.ValueType(state),
                name=name,
                page_size=min(page_size, MAX_PAGE),
                page_token=token,
            )
            reply = await _rpc.unary(self.policy, "list", lambda: self._stub.ListBuilds(request))
            return [wire.build_of(b) for b in reply.builds], reply.next_page_token

        return _rpc.pages(page)

    async def watch(
        self, build_id: str, after_seq: int = 0, stored_only: bool = False
    ) -> AsyncIterator[BuildUpdate]:
        """Every update of the build after after_seq, until its final state.
        When the stream breaks on an UNAVAILABLE, it is opened again after the
        last update seen, backing off; an update received resets the backoff."""
        seen = after_seq
        backoff = self.watch_policy.backoff(f"watch of {build_id}")
        while True:
            request = pb.WatchBuildRequest(id=build_id, after_seq=seen, stored_only=stored_only)
            try:
                async for message in self._stub.WatchBuild(request):
                    update = wire.update_of(message)
                    seen = update.seq or seen
                    backoff.reset()
                    yield update
                return
            except grpc.RpcError as exc:
                await backoff.wait(from_rpc(exc))


class BuilderClient:
    """The blocking BuilderClient: the async client's calls, waited for."""

    def __init__(
        self,
        address: str = "",
        *,
        policy: RetryPolicy = _rpc.DEFAULT_POLICY,
        watch_policy: RetryPolicy = WATCH_POLICY,
        token: str = "",
    ) -> None:
        self.address = discovery.address("builder", address)
        self._loop = LoopThread("kiln-builder-client")
        self._async = self._loop.run(self._make(policy, watch_policy, token))

    async def _make(
        self, policy: RetryPolicy, watch_policy: RetryPolicy, token: str
    ) -> AsyncBuilderClient:
        return AsyncBuilderClient(
            self.address, policy=policy, watch_policy=watch_policy, token=token
        )

    def close(self) -> None:
        self._loop.close(self._async.close())

    def __enter__(self) -> BuilderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        recipe: RecipeSource,
        *,
        idempotency_key: str = "",
        no_cache: bool = False,
        skip_boot_test: bool = False,
    ) -> Build:
        return self._loop.run(
            self._async.submit(
                recipe,
                idempotency_key=idempotency_key,
                no_cache=no_cache,
                skip_boot_test=skip_boot_test,
            )
        )

    def validate(self, recipe: RecipeSource) -> Validation:
        return self._loop.run(self._async.validate(recipe))

    def get(self, build_id: str) -> Build:
        return self._loop.run(self._async.get(build_id))

    def cancel(self, build_id: str) -> Build:
        return self._loop.run(self._async.cancel(build_id))

    def list(
        self,
        state: BuildState = BuildState.UNSPECIFIED,
        name: str = "",
        page_size: int = 50,
    ) -> Iterator[Build]:
        return self._loop.iterate(self._async.list(state, name, page_size))

    def watch(
        self, build_id: str, after_seq: int = 0, stored_only: bool = False
    ) -> Iterator[BuildUpdate]:
        return self._loop.iterate(self._async.watch(build_id, after_seq, stored_only))
