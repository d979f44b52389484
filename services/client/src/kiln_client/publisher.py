"""Clients of the Publisher service: AsyncPublisherClient (the implementation)
and PublisherClient (the same, blocking). Publishing to Glance and the
marketplace, publications, marketplace entries, and base images for the
builder. Failures are the domain errors (kiln_common.errors) their status
stands for; every unary call is retried by the one retry policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from google.protobuf.duration_pb2 import Duration

from kiln_api.publisher.v1 import publisher_pb2 as pb
from kiln_api.publisher.v1 import publisher_pb2_grpc as pb_grpc
from kiln_client import _rpc, discovery
from kiln_client._sync import LoopThread
from kiln_common.errors import DataLoss
from kiln_common.retry import RetryPolicy

# Publishing a large image to Glance takes a while: one call, with no
# retries of its own beyond a publisher that is not reachable yet.
PUBLISH_POLICY = RetryPolicy(attempts=3)


@dataclass(frozen=True)
class Marketplace:
    endorser: str = ""
    valid_for_seconds: int = 0
    title: str = ""
    description: str = ""


def publish_request(
    *,
    artifact_id: str = "",
    build_id: str = "",
    glance: Sequence[pb.GlanceTarget] = (),
    marketplace: Marketplace | None = None,
) -> pb.PublishRequest:
    request = pb.PublishRequest(glance=list(glance))
    if artifact_id:
        request.artifact_id = artifact_id
    else:
        request.build_id = build_id
    if marketplace is not None:
        m = pb.MarketplaceTarget(
            endorser=marketplace.endorser,
            title=marketplace.title,
            description=marketplace.description,
        )
        if marketplace.valid_for_seconds:
            m.valid_for.CopyFrom(Duration(seconds=marketplace.valid_for_seconds))
        request.marketplace.CopyFrom(m)
    return request


class AsyncPublisherClient:
    def __init__(self, address: str = "", *, policy: RetryPolicy = _rpc.DEFAULT_POLICY) -> None:
        self.address = discovery.address("publisher", address)
        self.policy = policy
        self._channel = _rpc.channel(self.address)
        self._stub = pb_grpc.PublisherStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncPublisherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, request: pb.PublishRequest) -> pb.Publication:
        """Publishes and waits for the outcome (idempotent: asking again gives
        the same images and entries)."""
        return await _rpc.unary(PUBLISH_POLICY, "publish", lambda: self._stub.Publish(request))

    async def publication(self, publication_id: str) -> pb.Publication:
        request = pb.GetPublicationRequest(id=publication_id)
        return await _rpc.unary(self.policy, "get", lambda: self._stub.GetPublication(request))

    def publications(
        self, build_id: str = "", artifact_id: str = ""
    ) -> AsyncIterator[pb.Publication]:
        async def page(token: str) -> tuple[list[pb.Publication], str]:
            request = pb.ListPublicationsRequest(
                build_id=build_id, artifact_id=artifact_id, page_token=token
            )
            reply = await _rpc.unary(
                self.policy, "list", lambda: self._stub.ListPublications(request)
            )
            return list(reply.publications), reply.next_page_token

        return _rpc.pages(page)

    async def search(self, request: pb.SearchEntriesRequest) -> list[pb.Entry]:
        reply = await _rpc.unary(self.policy, "search", lambda: self._stub.SearchEntries(request))
        return list(reply.entries)

    async def entry(self, identifier: str) -> pb.Entry:
        request = pb.GetEntryRequest(identifier=identifier)
        return await _rpc.unary(self.policy, "entry", lambda: self._stub.GetEntry(request))

    async def deprecate(self, identifier: str, endorser: str = "") -> pb.Entry:
        request = pb.DeprecateEntryRequest(identifier=identifier, endorser=endorser)
        return await _rpc.unary(
            self.policy, "deprecate", lambda: self._stub.DeprecateEntry(request)
        )

    async def fetch_base(
        self, request: pb.FetchBaseRequest
    ) -> tuple[pb.FetchBaseHeader, AsyncIterator[bytes]]:
        """The base's header (size, digests) and its bytes; the caller checks them."""
        call = self._stub.FetchBase(request)
        stream = aiter(call)
        first = await _rpc.mapped(lambda: anext(stream))
        if first.WhichOneof("msg") != "header":
            raise DataLoss("the publisher sent a base without its header")

        async def data() -> AsyncIterator[bytes]:
            while True:
                try:
                    chunk = await _rpc.mapped(lambda: anext(stream))
                except StopAsyncIteration:
                    return
                yield chunk.data

        return first.header, data()


class PublisherClient:
    """The blocking PublisherClient: the async client's calls, waited for."""

    def __init__(self, address: str = "", *, policy: RetryPolicy = _rpc.DEFAULT_POLICY) -> None:
        self.address = discovery.address("publisher", address)
        self._loop = LoopThread("kiln-publisher-client")
        self._async = self._loop.run(self._make(policy))

    async def _make(self, policy: RetryPolicy) -> AsyncPublisherClient:
        return AsyncPublisherClient(self.address, policy=policy)

    def close(self) -> None:
        self._loop.close(self._async.close())

    def __enter__(self) -> PublisherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, request: pb.PublishRequest) -> pb.Publication:
        return self._loop.run(self._async.publish(request))

    def publication(self, publication_id: str) -> pb.Publication:
        return self._loop.run(self._async.publication(publication_id))

    def publications(self, build_id: str = "", artifact_id: str = "") -> Iterator[pb.Publication]:
        return self._loop.iterate(self._async.publications(build_id, artifact_id))

    def search(self, request: pb.SearchEntriesRequest) -> list[pb.Entry]:
        return self._loop.run(self._async.search(request))

    def entry(self, identifier: str) -> pb.Entry:
        return self._loop.run(self._async.entry(identifier))

    def deprecate(self, identifier: str, endorser: str = "") -> pb.Entry:
        return self._loop.run(self._async.deprecate(identifier, endorser))
