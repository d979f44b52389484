"""kiln.builder.v1.Builder over gRPC: converts messages and calls the core.
Errors map to status codes in one place (kiln_common.grpc_errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_builder.service.core import BuilderCore
from kiln_common.grpc_errors import servicer

Context = grpc.aio.ServicerContext[Any, Any]


@servicer
class BuilderServicer(pb_grpc.BuilderServicer):
    def __init__(self, core: BuilderCore) -> None:
        self.core = core

    async def SubmitBuild(self, request: pb.SubmitBuildRequest, context: Context) -> pb.Build:
        return await self.core.submit(request)

    async def GetBuild(self, request: pb.GetBuildRequest, context: Context) -> pb.Build:
        return await self.core.get(request.id)

    async def ListBuilds(
        self, request: pb.ListBuildsRequest, context: Context
    ) -> pb.ListBuildsResponse:
        return await self.core.list(request)

    async def WatchBuild(
        self, request: pb.WatchBuildRequest, context: Context
    ) -> AsyncIterator[pb.BuildUpdate]:
        async for update in self.core.watch(request.id, request.after_seq, request.stored_only):
            yield update

    async def CancelBuild(self, request: pb.CancelBuildRequest, context: Context) -> pb.Build:
        return await self.core.cancel(request.id)

    async def GetBuildRecipe(
        self, request: pb.GetBuildRequest, context: Context
    ) -> pb.RecipeSource:
        return await self.core.recipe_of(request.id)

    async def ValidateRecipe(
        self, request: pb.ValidateRecipeRequest, context: Context
    ) -> pb.ValidateRecipeResponse:
        return self.core.validate(request.recipe)
