"""kiln.builder.v1.Schedules over gRPC: converts messages and calls the core.
Errors map to status codes in one place (kiln_common.grpc_errors)."""

from __future__ import annotations

from typing import Any

import grpc

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_builder.service.schedules.core import ScheduleCore
from kiln_builder.service.servicer import recipe_source
from kiln_client import wire
from kiln_common.grpc_errors import servicer

Context = grpc.aio.ServicerContext[Any, Any]


@servicer
class SchedulesServicer(pb_grpc.SchedulesServicer):
    def __init__(self, core: ScheduleCore) -> None:
        self.core = core

    async def AddSchedule(self, request: pb.AddScheduleRequest, context: Context) -> pb.Schedule:
        schedule = await self.core.add(
            recipe_source(request.recipe), request.cron, request.time_zone, request.every,
            request.pause_after,
        )  # fmt: skip
        return wire.schedule_message(schedule)

    async def GetSchedule(self, request: pb.ScheduleRequest, context: Context) -> pb.Schedule:
        return wire.schedule_message(await self.core.get(request.id))

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        found = await self.core.list()
        return pb.ListSchedulesResponse(schedules=[wire.schedule_message(s) for s in found])

    async def DeleteSchedule(self, request: pb.ScheduleRequest, context: Context) -> pb.Schedule:
        return wire.schedule_message(await self.core.delete(request.id))

    async def PauseSchedule(self, request: pb.ScheduleRequest, context: Context) -> pb.Schedule:
        return wire.schedule_message(await self.core.pause(request.id))

    async def ResumeSchedule(self, request: pb.ScheduleRequest, context: Context) -> pb.Schedule:
        return wire.schedule_message(await self.core.resume(request.id))

    async def RunSchedule(self, request: pb.ScheduleRequest, context: Context) -> pb.Schedule:
        return wire.schedule_message(await self.core.run_now(request.id))

    async def ListScheduleRuns(
        self, request: pb.ScheduleRequest, context: Context
    ) -> pb.ListScheduleRunsResponse:
        runs = await self.core.runs(request.id)
        return pb.ListScheduleRunsResponse(runs=[wire.run_message(r) for r in runs])
