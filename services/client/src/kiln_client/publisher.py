"""Clients of the Publisher service: AsyncPublisherClient (the implementation)
and PublisherClient (the same, blocking). Publishing to Glance and the
marketplace, publications, marketplace entries, and base images for the
builder. Failures are the domain errors (kiln_common.errors) their status
stands for; every unary call is retried by the one retry policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from kiln_api.publisher.v1 import publisher_pb2 as pb
from kiln_api.publisher.v1 import publisher_pb2_grpc as pb_grpc
from kiln_client import _rpc, discovery, wire
from kiln_client._sync import LoopThread
from kiln_common.errors import DataLoss
from kiln_common.publications import BaseHeader, Entry, Publication, PublishRequest
from kiln_common.retry import RetryPolicy

# Publishing a large image to Glance takes a while: one call, with no
# retries of its own beyond a publisher that is not reachable yet.
PUBLISH_POLICY = RetryPolicy(attempts=3)


class AsyncPublisherClient:
    def __init__(
        self, address: str = "", *, policy: RetryPolicy = _rpc.DEFAULT_POLICY, token: str = ""
    ) -> None:
        self.address = discovery.address("publisher", address)
        self.policy = policy
        self._channel = _rpc.channel(self.address, token)
        self._stub = pb_grpc.PublisherStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncPublisherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def publish(self, request: PublishRequest) -> Publication:
        """Publishes and waits for the outcome (idempotent: asking again gives
        the same images and entries)."""
        msg = wire.publish_message(request)
        reply = await _rpc.unary(PUBLISH_POLICY, "publish", lambda: self._stub.Publish(msg))
        return wire.publication_of(reply)

    async def publication(self, publication_id: str) -> Publication:
        request = pb.GetPublicationRequest(id=publication_id)
        reply = await _rpc.unary(self.policy, "get", lambda: self._stub.GetPublication(request))
        return wire.publication_of(reply)

    def publications(self, build_id: str = "", artifact_id: str = "") -> AsyncIterator[Publication]:
        async def page(token: str) -> tuple[list[Publication], str]:
            request = pb.ListPublicationsRequest(
                build_id=build_id, artifact_id=artifact_id, page_token=token
            )
            reply = await _rpc.unary(
                self.policy, "list", lambda: self._stub.ListPublications(request)
            )
            return [wire.publication_of(p) for p in reply.publications], reply.next_page_token

        return _rpc.pages(page)

    async def search(self, **filters: str) -> list[Entry]:
        """Entries matching every filter given: text, os, os_version, arch,
        endorser, status (valid | expired | deprecated)."""
        request = pb.SearchEntriesRequest(**filters)
        reply = await _rpc.unary(self.policy, "search", lambda: self._stub.SearchEntries(request))
        return [wire.entry_of(e) for e in reply.entries]

    async def entry(self, identifier: str) -> Entry:
        request = pb.GetEntryRequest(identifier=identifier)
        reply = await _rpc.unary(self.policy, "entry", lambda: self._stub.GetEntry(request))
        return wire.entry_of(reply)

    async def deprecate(self, identifier: str, endorser: str = "") -> Entry:
        request = pb.DeprecateEntryRequest(identifier=identifier, endorser=endorser)
        reply = await _rpc.unary(
            self.policy, "deprecate", lambda: self._stub.DeprecateEntry(request)
        )
        return wire.entry_of(reply)

    async def fetch_base(
        self, cloud: str, image: str, region: str = ""
    ) -> tuple[BaseHeader, AsyncIterator[bytes]]:
        """A Glance image's header (size, digests) and its bytes; the caller checks them."""
        request = pb.FetchBaseRequest(
            glance=pb.GlanceImageRef(cloud=cloud, region=region, image=image)
        )
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

        return wire.base_header_of(first.header), data()


class PublisherClient:
    """The blocking PublisherClient: the async client's calls, waited for."""

    def __init__(
        self, address: str = "", *, policy: RetryPolicy = _rpc.DEFAULT_POLICY, token: str = ""
    ) -> None:
        self.address = discovery.address("publisher", address)
        self._loop = LoopThread("kiln-publisher-client")
        self._async = self._loop.run(self._make(policy, token))

    async def _make(self, policy: RetryPolicy, token: str) -> AsyncPublisherClient:
        return AsyncPublisherClient(self.address, policy=policy, token=token)

    def close(self) -> None:
        self._loop.close(self._async.close())

    def __enter__(self) -> PublisherClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, request: PublishRequest) -> Publication:
        return self._loop.run(self._async.publish(request))

    def publication(self, publication_id: str) -> Publication:
        return self._loop.run(self._async.publication(publication_id))

    def publications(self, build_id: str = "", artifact_id: str = "") -> Iterator[Publication]:
        return self._loop.iterate(self._async.publications(build_id, artifact_id))

    def search(self, **filters: str) -> list[Entry]:
        return self._loop.run(self._async.search(**filters))

    def entry(self, identifier: str) -> Entry:
        return self._loop.run(self._async.entry(identifier))

    def deprecate(self, identifier: str, endorser: str = "") -> Entry:
        return self._loop.run(self._async.deprecate(identifier, endorser))
