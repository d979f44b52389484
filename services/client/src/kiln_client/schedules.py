"""Clients of the Schedules API (the CLI's `kiln schedule`), served by the
builder: AsyncSchedulesClient and the blocking SchedulesClient."""

from __future__ import annotations

import builtins

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_client import _rpc, discovery, wire
from kiln_client._sync import LoopThread
from kiln_common.schedules import Schedule, ScheduleRun
from kiln_recipe.source import RecipeSource


class AsyncSchedulesClient:
    def __init__(self, address: str = "", *, token: str = "") -> None:
        self.address = discovery.address("builder", address)
        self.policy = _rpc.DEFAULT_POLICY
        self._channel = _rpc.channel(self.address, token)
        self._stub = pb_grpc.SchedulesStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def add(
        self, recipe: RecipeSource, *, cron: str = "", time_zone: str = "", every: str = "",
        pause_after: int = 0,
    ) -> Schedule:  # fmt: skip
        request = pb.AddScheduleRequest(
            recipe=wire.recipe_message(recipe), cron=cron, time_zone=time_zone, every=every,
            pause_after=pause_after,
        )  # fmt: skip
        # Not retried: a second add would make a second schedule.
        return wire.schedule_of(await _rpc.mapped(lambda: self._stub.AddSchedule(request)))

    async def _one(self, verb: str, schedule_id: str, retried: bool = True) -> Schedule:
        """retried: the call means the same done twice (not a run, not a delete)."""
        call = getattr(self._stub, verb)
        request = pb.ScheduleRequest(id=schedule_id)
        if not retried:
            return wire.schedule_of(await _rpc.mapped(lambda: call(request)))
        return wire.schedule_of(await _rpc.unary(self.policy, verb, lambda: call(request)))

    async def get(self, schedule_id: str) -> Schedule:
        return await self._one("GetSchedule", schedule_id)

    async def delete(self, schedule_id: str) -> Schedule:
        return await self._one("DeleteSchedule", schedule_id, retried=False)

    async def pause(self, schedule_id: str) -> Schedule:
        return await self._one("PauseSchedule", schedule_id)

    async def resume(self, schedule_id: str) -> Schedule:
        return await self._one("ResumeSchedule", schedule_id)

    async def run(self, schedule_id: str) -> Schedule:
        return await self._one("RunSchedule", schedule_id, retried=False)

    async def list(self) -> builtins.list[Schedule]:
        request = pb.ListSchedulesRequest()
        reply = await _rpc.unary(self.policy, "list", lambda: self._stub.ListSchedules(request))
        return [wire.schedule_of(s) for s in reply.schedules]

    async def runs(self, schedule_id: str) -> builtins.list[ScheduleRun]:
        request = pb.ScheduleRequest(id=schedule_id)
        reply = await _rpc.unary(self.policy, "runs", lambda: self._stub.ListScheduleRuns(request))
        return [wire.run_of(r) for r in reply.runs]


class SchedulesClient:
    """The same, blocking."""

    def __init__(self, address: str = "", *, token: str = "") -> None:
        self.address = discovery.address("builder", address)
        self._loop = LoopThread("kiln-schedules-client")
        self._async = self._loop.run(self._make(token))

    async def _make(self, token: str) -> AsyncSchedulesClient:
        return AsyncSchedulesClient(self.address, token=token)

    def close(self) -> None:
        self._loop.close(self._async.close())

    def __enter__(self) -> SchedulesClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(
        self, recipe: RecipeSource, *, cron: str = "", time_zone: str = "", every: str = "",
        pause_after: int = 0,
    ) -> Schedule:  # fmt: skip
        return self._loop.run(self._async.add(recipe, cron=cron, time_zone=time_zone,
                                              every=every, pause_after=pause_after))  # fmt: skip

    def get(self, schedule_id: str) -> Schedule:
        return self._loop.run(self._async.get(schedule_id))

    def delete(self, schedule_id: str) -> Schedule:
        return self._loop.run(self._async.delete(schedule_id))

    def pause(self, schedule_id: str) -> Schedule:
        return self._loop.run(self._async.pause(schedule_id))

    def resume(self, schedule_id: str) -> Schedule:
        return self._loop.run(self._async.resume(schedule_id))

    def run(self, schedule_id: str) -> Schedule:
        return self._loop.run(self._async.run(schedule_id))

    def list(self) -> builtins.list[Schedule]:
        return self._loop.run(self._async.list())

    def runs(self, schedule_id: str) -> builtins.list[ScheduleRun]:
        return self._loop.run(self._async.runs(schedule_id))
