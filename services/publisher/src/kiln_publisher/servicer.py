"""The gRPC layer: converts messages and calls the core, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import grpc

from kiln_api.publisher.v1 import publisher_pb2 as pb
from kiln_api.publisher.v1 import publisher_pb2_grpc as pb_grpc
from kiln_client import wire
from kiln_common.digests import Digests
from kiln_common.errors import DataLoss, InvalidArgument
from kiln_common.grpc_errors import servicer
from kiln_common.publications import Entry, GlanceTarget, PublishRequest
from kiln_market import SignedEntry
from kiln_market.entry import parse_time
from kiln_publisher import facts
from kiln_publisher.core import PublisherCore
from kiln_publisher.market import Query
from kiln_publisher.targets import Request
from kiln_recipe.schema import Publish

Context = grpc.aio.ServicerContext[Any, Any]

MAX_PAGE = 500  # publications a page, as ListBuilds


def publish_from(request: PublishRequest) -> Publish:
    """The request's targets, checked by the recipe's own publish: schema."""
    doc: dict[str, Any] = {}
    if request.glance:
        doc["glance"] = [_glance(t) for t in request.glance]
    if (m := request.marketplace) is not None:
        market: dict[str, Any] = {"title": m.title, "description": m.description}
        if m.endorser:
            market["endorser"] = m.endorser
        if m.valid_for is not None:
            market["valid_for"] = int(m.valid_for.total_seconds())
        doc["marketplace"] = market
    return facts.publish_section(doc, prefix="")


def _glance(t: GlanceTarget) -> dict[str, Any]:
    """The target as the recipe writes it: what the API leaves empty, left out."""
    given = {
        k: v
        for k, v in asdict(t).items()
        if v or k not in ("region", "name", "visibility", "retire")
    }
    return {**given, "tags": list(t.tags)}


def entry_to(signed: SignedEntry, fresh_location: str = "") -> pb.Entry:
    e = signed.entry
    return wire.entry_message(
        Entry(
            identifier=e.identifier,
            status=e.status(),
            endorser=e.endorser.email,
            os=e.os,
            os_version=e.os_version,
            arch=e.arch,
            title=e.title,
            description=e.description,
            size=e.size,
            format=e.format,
            sha512=e.checksums.sha512,
            sha256=e.checksums.sha256,
            locations=tuple(e.locations),
            created=parse_time(e.created),
            valid_until=parse_time(e.valid_until),
            document=signed.document,
            artifact_id=e.artifact_id,
            fresh_location=fresh_location,
        )
    )


@servicer
class PublisherServicer(pb_grpc.PublisherServicer):
    def __init__(self, core: PublisherCore) -> None:
        self.core = core

    async def Publish(self, request: pb.PublishRequest, context: Context) -> pb.Publication:
        asked = wire.publish_of(request)
        if asked.artifact_id is None and asked.build_id is None:
            raise InvalidArgument("name an artifact_id or a build_id to publish")
        ask = Request(
            artifact_id=asked.artifact_id or "",
            build_id=asked.build_id or "",
            publish=publish_from(asked),
        )
        return wire.publication_message(await self.core.publish(ask))

    async def GetPublication(
        self, request: pb.GetPublicationRequest, context: Context
    ) -> pb.Publication:
        return wire.publication_message(await self.core.get_publication(request.id))

    async def ListPublications(
        self, request: pb.ListPublicationsRequest, context: Context
    ) -> pb.ListPublicationsResponse:
        if request.page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size: at most {MAX_PAGE}")
        found = await self.core.list_publications(request.build_id, request.artifact_id)
        size = request.page_size or 100
        if request.page_token and not request.page_token.isdigit():
            raise InvalidArgument("page_token: not a token this service gave")
        start = int(request.page_token or 0)
        page = found[start : start + size]
        token = str(start + size) if start + size < len(found) else ""
        return pb.ListPublicationsResponse(
            publications=[wire.publication_message(p) for p in page], next_page_token=token
        )

    async def SearchEntries(
        self, request: pb.SearchEntriesRequest, context: Context
    ) -> pb.SearchEntriesResponse:
        query = Query(
            os=request.os or None,
            os_version=request.os_version or None,
            arch=request.arch or None,
            endorser=request.endorser or None,
            status=request.status or None,
            text=request.text or None,
        )
        found = await self.core.search(query)
        return pb.SearchEntriesResponse(entries=[entry_to(s) for s in found])

    async def GetEntry(self, request: pb.GetEntryRequest, context: Context) -> pb.Entry:
        signed = await self.core.get_entry(request.identifier)
        return entry_to(signed, await self.core.fresh_location(signed.entry))

    async def DeprecateEntry(self, request: pb.DeprecateEntryRequest, context: Context) -> pb.Entry:
        signed = await self.core.deprecate(request.identifier, request.endorser or None)
        return entry_to(signed)

    async def FetchBase(
        self, request: pb.FetchBaseRequest, context: Context
    ) -> AsyncIterator[pb.FetchBaseChunk]:
        if request.WhichOneof("source") != "glance":
            raise InvalidArgument(
                "name a Glance image (marketplace bases are downloaded from the"
                " entry's locations: GetEntry)"
            )
        ref = request.glance
        size, want, chunks = await self.core.open_glance(ref.cloud, ref.region or None, ref.image)
        yield pb.FetchBaseChunk(header=pb.FetchBaseHeader(size=size, sha512=want))
        digests = Digests("sha512")
        async for data in chunks:
            digests.update(data)
            yield pb.FetchBaseChunk(data=data)
        # The receiver checks too; this says which side was wrong.
        if digests.hexdigest("sha512") != want:
            raise DataLoss(f"the base's bytes do not match its SHA-512 {want[:16]}…")
