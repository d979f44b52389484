"""Clients of the Channels API (the CLI's `kiln channel`), served by the
builder: AsyncChannelsClient and the blocking ChannelsClient."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_client import _rpc, discovery, wire
from kiln_client._sync import LoopThread
from kiln_common.channels import Channel, ChannelRequirement


@dataclass
class Revoked:
    builds: list[str] = field(default_factory=list)  # the builds revoked by this call
    channels: list[Channel] = field(default_factory=list)  # the channels that moved


class AsyncChannelsClient:
    def __init__(self, address: str = "", *, token: str = "") -> None:
        self.address = discovery.address("builder", address)
        self.policy = _rpc.DEFAULT_POLICY
        self._channel = _rpc.channel(self.address, token)
        self._stub = pb_grpc.ChannelsStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def set(self, name: str, channel: str, target: str) -> Channel:
        request = pb.SetChannelRequest(name=name, channel=channel, target=target)
        # Setting a channel to where it points already changes nothing: retried.
        reply = await _rpc.unary(self.policy, "set", lambda: self._stub.SetChannel(request))
        return wire.channel_of(reply)

    async def get(self, name: str, channel: str) -> Channel:
        request = pb.ChannelRequest(name=name, channel=channel)
        reply = await _rpc.unary(self.policy, "get", lambda: self._stub.GetChannel(request))
        return wire.channel_of(reply)

    async def list(self, name: str) -> builtins.list[Channel]:
        request = pb.ListChannelsRequest(name=name)
        reply = await _rpc.unary(self.policy, "list", lambda: self._stub.ListChannels(request))
        return [wire.channel_of(c) for c in reply.channels]

    async def policy_set(
        self, name: str, channel: str, requires: ChannelRequirement | None
    ) -> Channel:
        request = pb.SetChannelPolicyRequest(name=name, channel=channel)
        if requires is not None:
            request.requires.CopyFrom(wire.to_message(requires, pb.ChannelRequirement))
        reply = await _rpc.unary(
            self.policy, "policy", lambda: self._stub.SetChannelPolicy(request)
        )
        return wire.channel_of(reply)

    async def revoke(
        self, name: str, version: str, *, descendants: bool = False, reason: str = ""
    ) -> Revoked:
        request = pb.RevokeVersionRequest(
            name=name, version=version, descendants=descendants, reason=reason
        )
        # Revoking twice revokes nothing more: retried.
        reply = await _rpc.unary(self.policy, "revoke", lambda: self._stub.RevokeVersion(request))
        return Revoked(list(reply.builds), [wire.channel_of(c) for c in reply.channels])


class ChannelsClient:
    """The same, blocking."""

    def __init__(self, address: str = "", *, token: str = "") -> None:
        self.address = discovery.address("builder", address)
        self._loop = LoopThread("kiln-channels-client")
        self._async = self._loop.run(self._make(token))

    async def _make(self, token: str) -> AsyncChannelsClient:
        return AsyncChannelsClient(self.address, token=token)

    def close(self) -> None:
        self._loop.close(self._async.close())

    def __enter__(self) -> ChannelsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set(self, name: str, channel: str, target: str) -> Channel:
        return self._loop.run(self._async.set(name, channel, target))

    def get(self, name: str, channel: str) -> Channel:
        return self._loop.run(self._async.get(name, channel))

    def list(self, name: str) -> builtins.list[Channel]:
        return self._loop.run(self._async.list(name))

    def policy_set(self, name: str, channel: str, requires: ChannelRequirement | None) -> Channel:
        return self._loop.run(self._async.policy_set(name, channel, requires))

    def revoke(
        self, name: str, version: str, *, descendants: bool = False, reason: str = ""
    ) -> Revoked:
        return self._loop.run(
            self._async.revoke(name, version, descendants=descendants, reason=reason)
        )
