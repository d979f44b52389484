"""kiln.builder.v1.Builder over gRPC: converts messages and calls the core.
Errors map to status codes in one place (kiln_common.grpc_errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_builder.service.core import BuilderCore
from kiln_client import wire
from kiln_common.builds import BuildState
from kiln_common.errors import InvalidArgument
from kiln_common.grpc_errors import servicer
from kiln_recipe.source import RecipeSource

Context = grpc.aio.ServicerContext[Any, Any]


@servicer
class BuilderServicer(pb_grpc.BuilderServicer):
    def __init__(self, core: BuilderCore) -> None:
        self.core = core

    async def SubmitBuild(self, request: pb.SubmitBuildRequest, context: Context) -> pb.Build:
        build = await self.core.submit(
            recipe_source(request.recipe), request.idempotency_key, no_cache=request.no_cache,
            skip_boot_test=request.skip_boot_test,
        )  # fmt: skip
        return wire.build_message(build)

    async def GetBuild(self, request: pb.GetBuildRequest, context: Context) -> pb.Build:
        return wire.build_message(await self.core.get(request.id))

    async def ListBuilds(
        self, request: pb.ListBuildsRequest, context: Context
    ) -> pb.ListBuildsResponse:
        builds, token = await self.core.list(
            BuildState(request.state), request.name, request.page_size, request.page_token
        )
        return pb.ListBuildsResponse(
            builds=[wire.build_message(b) for b in builds], next_page_token=token
        )

    async def WatchBuild(
        self, request: pb.WatchBuildRequest, context: Context
    ) -> AsyncIterator[pb.BuildUpdate]:
        async for update in self.core.watch(request.id, request.after_seq, request.stored_only):
            yield wire.update_message(update)

    async def CancelBuild(self, request: pb.CancelBuildRequest, context: Context) -> pb.Build:
        return wire.build_message(await self.core.cancel(request.id))

    async def GetBuildRecipe(
        self, request: pb.GetBuildRequest, context: Context
    ) -> pb.RecipeSource:
        return wire.recipe_message(await self.core.recipe_of(request.id))

    async def ValidateRecipe(
        self, request: pb.ValidateRecipeRequest, context: Context
    ) -> pb.ValidateRecipeResponse:
        return wire.validation_message(self.core.validate(recipe_source(request.recipe)))


def recipe_source(message: pb.RecipeSource) -> RecipeSource:
    try:
        return wire.recipe_of(message)
    except ValueError as exc:  # a structure holding NaN or infinity
        raise InvalidArgument(f"recipe: the structured document cannot be read: {exc}") from None
