"""kiln.builder.v1.Channels over gRPC: converts messages and calls the core.
Errors map to status codes in one place (kiln_common.grpc_errors)."""

from __future__ import annotations

from typing import Any

import grpc

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_builder.service.channels.core import ChannelCore
from kiln_client import wire
from kiln_common.channels import ChannelRequirement
from kiln_common.grpc_errors import servicer

Context = grpc.aio.ServicerContext[Any, Any]


@servicer
class ChannelsServicer(pb_grpc.ChannelsServicer):
    def __init__(self, core: ChannelCore) -> None:
        self.core = core

    async def SetChannel(self, request: pb.SetChannelRequest, context: Context) -> pb.Channel:
        found = await self.core.set(request.name, request.channel, request.target)
        return wire.channel_message(found)

    async def GetChannel(self, request: pb.ChannelRequest, context: Context) -> pb.Channel:
        return wire.channel_message(await self.core.get(request.name, request.channel))

    async def ListChannels(
        self, request: pb.ListChannelsRequest, context: Context
    ) -> pb.ListChannelsResponse:
        found = await self.core.list(request.name)
        return pb.ListChannelsResponse(channels=[wire.channel_message(c) for c in found])

    async def SetChannelPolicy(
        self, request: pb.SetChannelPolicyRequest, context: Context
    ) -> pb.Channel:
        requires = None
        if request.HasField("requires"):
            requires = ChannelRequirement(request.requires.channel, request.requires.seconds)
        found = await self.core.set_policy(request.name, request.channel, requires)
        return wire.channel_message(found)

    async def RevokeVersion(
        self, request: pb.RevokeVersionRequest, context: Context
    ) -> pb.RevokeVersionResponse:
        revoked, moved = await self.core.revoke(
            request.name, request.version, descendants=request.descendants, reason=request.reason
        )
        return pb.RevokeVersionResponse(
            builds=revoked, channels=[wire.channel_message(c) for c in moved]
        )
