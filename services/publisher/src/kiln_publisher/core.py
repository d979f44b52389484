"""The publisher's core, transport-free: resolves what to publish from storage
(and the recipe the Builder API hands out), publishes it to Glance (A's GlancePublisher)
and the marketplace (B's Market), and records each Publication in a NATS KV
bucket so any replica answers and a publication interrupted by a dying pod is
finished, not repeated, by the next attempt."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import timedelta

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from kiln_client import AsyncBuilderClient, AsyncStorageClient
from kiln_client.channels import AsyncChannelsClient
from kiln_client.credentials import acting_for
from kiln_common import jetstream
from kiln_common.artifacts import Artifact
from kiln_common.auth.identity import owner, visible
from kiln_common.builds import Build
from kiln_common.errors import FailedPrecondition, InvalidArgument, KilnError, NotFound
from kiln_common.events import Publisher
from kiln_common.ids import check_id, new_id
from kiln_common.logs import redact
from kiln_common.publications import Publication
from kiln_market import Entry, SignedEntry
from kiln_market.entry import identifier_for
from kiln_publisher import facts
from kiln_publisher.claims import CLAIM_PREFIX, Claims
from kiln_publisher.glance import GlancePublisher
from kiln_publisher.glance.api import where
from kiln_publisher.market import Market, Query
from kiln_publisher.market.links import download_path
from kiln_publisher.model import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    Result,
    record_bytes,
    record_key,
    record_of,
)
from kiln_publisher.targets import Request, glance_target, publish_for, revoke_how, target_name
from kiln_publisher.tenants import ANY, EVERY, TenantPolicy
from kiln_recipe import RecipeError, bundle
from kiln_recipe.schema import GlancePublish, MarketplacePublish, Publish

log = logging.getLogger(__name__)

PUBLICATIONS_BUCKET = "KILN_PUBLICATIONS"
IMAGE_KIND = "image"
# GetEntry gives a freshly signed URL only if storage answers this fast.
FRESH_LOCATION_SECONDS = 3.0
KIND_LABEL = "kiln-kind"


@dataclass
class Revocation:
    """What revoking a build did: Glance images (id, how) retired, entries
    deprecated, and what failed (retried with the event)."""

    images: list[tuple[str, str]] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class PublisherCore:
    def __init__(
        self,
        storage: AsyncStorageClient,
        js: JetStreamContext,
        events: Publisher,
        glance: GlancePublisher | None,
        market: Market | None,
        *,
        builder: AsyncBuilderClient | None = None,
        channels: AsyncChannelsClient | None = None,
        default_endorser: str = "",
        url_seconds: int = 7 * 24 * 3600,
        replicas: int = 1,
        tenants: TenantPolicy | None = None,
    ) -> None:
        self.storage = storage
        self.builder = builder
        self.channels = channels
        # The marketplace's address as readers reach it (set once it serves): "" for none.
        self.download_base = ""
        self.js = js
        self.events = events
        self.glance = glance
        self.market = market
        self.default_endorser = default_endorser
        self.url_seconds = url_seconds
        self.replicas = replicas
        self.tenants = tenants or TenantPolicy({ANY: EVERY})
        self._kv: KeyValue | None = None
        self.claims = Claims(self._records)

    # ---- records -------------------------------------------------------------------

    async def _records(self) -> KeyValue:
        if self._kv is None:
            self._kv = await jetstream.mapped(
                lambda: jetstream.key_value(self.js, PUBLICATIONS_BUCKET, replicas=self.replicas)
            )
        return self._kv

    async def _save(self, pub: Publication) -> None:
        kv = await self._records()
        await jetstream.mapped(lambda: kv.put(record_key(pub.id), record_bytes(pub)))

    async def get_publication(self, publication_id: str) -> Publication:
        if not publication_id:
            raise InvalidArgument("a publication id is required")
        record_key(publication_id)  # a malformed id is the caller's error, before NATS
        kv = await self._records()
        try:
            found = await jetstream.mapped(lambda: kv.get(record_key(publication_id)))
        except NotFound:
            found = None
        pub = record_of(found.value) if found is not None and found.value is not None else None
        if pub is None or not visible(pub.tenant):  # another tenant's: the same words
            raise NotFound(f"no publication {publication_id}")
        return pub

    async def _find(self, publication_id: str) -> Publication | None:
        try:
            return await self.get_publication(publication_id)
        except NotFound:
            return None

    async def list_publications(
        self, build_id: str = "", artifact_id: str = ""
    ) -> list[Publication]:
        for value, what in ((build_id, "build id"), (artifact_id, "artifact id")):
            if value:
                check_id(value, what)
        await self._records()  # made if missing
        keys = await jetstream.mapped(lambda: jetstream.kv_keys(self.js, PUBLICATIONS_BUCKET))
        found = []
        for key in keys:
            if key.startswith(CLAIM_PREFIX):
                continue
            pub = await self._find(key)  # None for another tenant's
            if pub is None or (build_id and pub.build_id != build_id):
                continue
            if artifact_id and all(r.artifact_id != artifact_id for r in pub.results):
                continue
            found.append(pub)
        return sorted(found, key=lambda p: p.created_at, reverse=True)

    async def record_failure(
        self, publication_id: str, build_id: str, error: str, tenant: str
    ) -> None:
        """A publication that could not start, kept so `GetPublication` says why."""
        failed = Result("", "request", build_id, state=FAILED, error=redact(error))
        # A redelivery that fails keeps what earlier deliveries finished.
        pub = await self._find(publication_id) or Publication(
            id=publication_id, artifact_id="", build_id=build_id, tenant=tenant
        )
        await self._save(pub.with_result(failed))

    # ---- what to publish ----------------------------------------------------------

    async def _artifacts(self, request: Request) -> list[Artifact]:
        if request.artifact_id:
            return [await self.storage.stat(request.artifact_id)]
        if not request.build_id:
            raise InvalidArgument("name an artifact id or a build id to publish")
        check_id(request.build_id, "build id")
        record = await self.build(request.build_id)
        if record is not None and record.revoked is not None:
            raise FailedPrecondition(
                f"build {request.build_id} was revoked ({record.revoked_reason}): not published"
            )
        labelled = labelled_id(request.build_id, record)  # the record read once
        found = [a async for a in self.storage.list({"build-id": labelled, KIND_LABEL: IMAGE_KIND})]
        if not found:
            raise NotFound(f"build {request.build_id} has no image artifacts in storage")
        return found

    async def _labelled(self, build_id: str) -> str:
        return labelled_id(build_id, await self.build(build_id))

    async def build(self, build_id: str) -> Build | None:
        """The builder's record of the build (None: no builder, or it knows
        no such build): what automatic publishing believes, not an event."""
        if self.builder is None:
            return None
        try:
            return await self.builder.get(build_id)
        except (NotFound, InvalidArgument):
            return None

    async def recipe_of(self, build_id: str) -> facts.RecipeFacts:
        """The build's recipe facts, from the recipe the Builder API hands out;
        empty facts when it is not kept any more, the build is not Kiln's, or
        this publisher was told no builder."""
        if not build_id or self.builder is None:
            return facts.RecipeFacts()
        try:
            source = await self.builder.recipe(build_id)
        except (NotFound, InvalidArgument):  # not kept, or a build-id label not Kiln's
            return facts.RecipeFacts()
        try:  # the build record's recipe_digest, worked out the builder's way
            digest = (await asyncio.to_thread(bundle.check, source))[1]
        except RecipeError:
            digest = ""
        return facts.recipe_facts(facts.recipe_document(source), digest)

    async def channel_build(self, name: str, channel: str, tenant: str) -> str:
        """The build the tenant's channel of the recipe name points at now,
        as the builder says ("": none, or no builder was named)."""
        if self.channels is None:
            return ""
        try:
            with acting_for(tenant):  # channels are per tenant: ask as the build's
                return (await self.channels.get(name, channel)).build_id
        except (NotFound, InvalidArgument):
            return ""

    async def _sbom_sha256(self, build_id: str) -> str:
        if not build_id:
            return ""
        labelled = await self._labelled(build_id)
        async for sbom in self.storage.list({"build-id": labelled, KIND_LABEL: "sbom"}):
            return str(sbom.checksums.sha256)
        return ""

    # ---- publishing ----------------------------------------------------------------

    def _check(self, publish: Publish, tenant: str) -> None:
        if not publish.targets:
            raise InvalidArgument("name at least one target: a Glance cloud or the marketplace")
        endorser = None
        if publish.marketplace is not None:
            endorser = publish.marketplace.endorser or self.default_endorser
        self.tenants.check(tenant, [t.cloud for t in publish.glance], endorser)
        if publish.glance and self.glance is None:
            raise FailedPrecondition("this publisher has no clouds.yaml: Glance is not configured")
        if publish.glance and self.glance is not None:
            known = set(self.glance.clouds())
            for t in publish.glance:
                if t.cloud not in known:
                    names = ", ".join(sorted(known)) or "none"
                    raise InvalidArgument(f"unknown cloud {t.cloud!r} (clouds.yaml names: {names})")
        if publish.marketplace is not None and self.market is None:
            raise FailedPrecondition("the marketplace is turned off on this publisher")

    async def publish(
        self,
        request: Request,
        publication_id: str = "",
        tenant: str | None = None,
        *,
        again: bool = False,
    ) -> Publication:
        """Publishes every artifact of the request to every target, for the
        tenant (the caller's unless given: automatic publishing gives the
        build's). With a publication id that exists already, the targets it
        finished are kept and only the rest are done (a redelivered
        build.succeeded); with again, finished targets are done again too (a
        channel that moved back to a build: its image must be the one shown
        under the name again, and Glance publishing is idempotent per artifact)."""
        tenant = owner() if tenant is None else tenant
        self._check(request.publish, tenant)
        # What it reads from storage and the builder, it reads as the tenant:
        # another tenant's artifact or build is not found.
        with acting_for(tenant):
            return await self._publish(request, publication_id, tenant, again)

    async def _publish(
        self, request: Request, publication_id: str, tenant: str, again: bool
    ) -> Publication:
        artifacts = await self._artifacts(request)
        pub = await self._find(publication_id) if publication_id else None
        if pub is None:
            pub = Publication(
                id=publication_id or new_id(),
                artifact_id=request.artifact_id,
                build_id=request.build_id,
                tenant=tenant,
            )
        plan = [(a, p) for a in artifacts if (p := publish_for(request, a)).targets]
        pub = await self._planned(pub, plan)
        for artifact, publish in plan:
            pub = await self._publish_artifact(pub, artifact, publish, again)
        if not pub.results:
            raise FailedPrecondition(
                f"build {request.build_id} has no qcow2, raw or vmdk image for Glance"
            )
        return pub

    def _targets(
        self, artifact: Artifact, publish: Publish
    ) -> list[tuple[Result, GlancePublish | MarketplacePublish]]:
        """The artifact's result for each target, not yet started."""
        targets: list[tuple[Result, GlancePublish | MarketplacePublish]] = [
            (Result(artifact.id, "glance", target_name(t.cloud, t.region, t.name)), t)
            for t in publish.glance
        ]
        if publish.marketplace is not None:
            endorser = publish.marketplace.endorser or self.default_endorser
            targets.append((Result(artifact.id, "marketplace", endorser), publish.marketplace))
        return targets

    async def _planned(self, pub: Publication, plan: list[tuple[Artifact, Publish]]) -> Publication:
        """Records every target not recorded yet as pending, before any runs: a
        publication whose first target is done is not done while others wait."""
        known = {r.key for r in pub.results}
        new = [r for a, p in plan for r, _ in self._targets(a, p) if r.key not in known]
        for result in new:
            pub = pub.with_result(result)
        if new:
            await self._save(pub)
        return pub

    async def _publish_artifact(
        self, pub: Publication, artifact: Artifact, publish: Publish, again: bool
    ) -> Publication:
        build_id = artifact.labels.get("build-id", "") or pub.build_id
        recipe = await self.recipe_of(build_id)
        sbom = await self._sbom_sha256(build_id)
        url = await self.storage.url(artifact.id, self.url_seconds)
        done = set() if again else {r.key for r in pub.results if r.state == DONE}
        for result, target in self._targets(artifact, publish):
            if result.key in done:
                continue
            if isinstance(target, GlancePublish):
                work = self._to_glance(artifact, url, recipe, sbom, target, again)
            else:
                work = self._to_market(
                    artifact, url, recipe, sbom, target, result.target, pub.tenant
                )
            pub = await self._run(pub, result, work)
        return pub

    async def _run(
        self, pub: Publication, result: Result, work: AsyncIterator[Result]
    ) -> Publication:
        """Records the target as running, then its outcome; a failure is the
        target's, not the whole request's."""
        pub = pub.with_result(replace(result, state=RUNNING))
        await self._save(pub)
        try:
            async for outcome in work:
                result = outcome
            result = replace(result, state=DONE)
        except KilnError as exc:
            log.warning("publishing %s to %s failed: %s", result.artifact_id, result.target, exc)
            result = replace(result, state=FAILED, error=redact(str(exc)))  # kept, shown
        except Exception as exc:
            # Not left RUNNING for good: the record says it failed, the log says how.
            log.exception("publishing %s to %s failed", result.artifact_id, result.target)
            result = replace(result, state=FAILED, error=f"internal error: {type(exc).__name__}")
        pub = pub.with_result(result)
        await self._save(pub)
        return pub

    async def _to_glance(
        self,
        artifact: Artifact,
        url: str,
        recipe: facts.RecipeFacts,
        sbom: str,
        target: GlancePublish,
        reveal: bool = False,
    ) -> AsyncIterator[Result]:
        assert self.glance is not None  # _check made sure
        source = facts.image_source(artifact, url, lambda: self._stream(artifact.id), recipe, sbom)
        image = await self.glance.publish(source, glance_target(target, reveal))
        where = target_name(image.cloud, image.region)
        yield Result(
            artifact.id,
            "glance",
            target_name(target.cloud, target.region, target.name),
            cloud=image.cloud,
            region=image.region or "",
            image_id=image.image_id,
            image_name=image.name,
            method=image.method,
            retired=tuple(image.retired),
        )
        data = {
            "artifact_id": artifact.id,
            "build_id": artifact.labels.get("build-id", ""),
            "cloud": image.cloud,
            "region": image.region or "",
            "image_id": image.image_id,
            "name": image.name,
            "method": image.method,
        }
        await self.events.publish("image.published", image.image_id, data)
        for old in image.retired:
            await self.events.publish(
                "image.retired",
                old,
                {"image_id": old, "cloud": image.cloud, "region": image.region or "",
                 "name": image.name, "how": target.retire, "where": where},
            )  # fmt: skip

    async def _to_market(
        self,
        artifact: Artifact,
        url: str,
        recipe: facts.RecipeFacts,
        sbom: str,
        market: MarketplacePublish,
        endorser: str,
        tenant: str,
    ) -> AsyncIterator[Result]:
        assert self.market is not None  # _check made sure
        if not endorser:
            raise InvalidArgument("name an endorser (the publisher has no default endorser)")
        image = facts.image_facts(
            artifact, self._locations(artifact, endorser, url), recipe, endorser, sbom,
            market.title, market.description,
        )  # fmt: skip
        valid_for = timedelta(seconds=market.valid_for) if market.valid_for else None
        signed = await self.market.publish(image, endorser, valid_for, tenant=tenant)
        yield Result(artifact.id, "marketplace", endorser, entry_identifier=signed.identifier)

    def _locations(self, artifact: Artifact, endorser: str, url: str) -> tuple[str, ...]:
        """An entry's locations: its stable download link on this marketplace
        first (it redirects to a URL signed when followed, so it lives as long
        as the entry), then the storage URL signed now (it dies in url_seconds)."""
        if not self.download_base or not artifact.checksums.sha1:
            return (url,)
        identifier = identifier_for(artifact.checksums.sha1)
        return (self.download_base + download_path(identifier, endorser), url)

    async def _stream(self, artifact_id: str) -> AsyncIterator[bytes]:
        async for chunk in self.storage.stream(artifact_id):
            yield chunk

    # ---- revocation ----------------------------------------------------------------

    async def settle_revoked(self, build_id: str) -> None:
        """After publishing a build: if it was revoked meanwhile (its
        build.revoked may have been handled before this publication ended),
        what was just published is retired too."""
        build = await self.build(build_id)
        if build is not None and build.revoked is not None:
            await self.revoke_build(build_id)

    async def revoke_build(self, build_id: str) -> Revocation:
        """Retires what was published of a build its record says is revoked
        (FailedPrecondition when it does not: an event is only a prompt)."""
        check_id(build_id, "build id")
        build = await self.build(build_id)
        if build is None or build.revoked is None:
            raise FailedPrecondition(f"the builder does not say build {build_id} is revoked")
        recipe = await self.recipe_of(build_id)
        return await self.revoke_publications(
            build_id, build.tenant, recipe.publish, build.revoked_reason
        )

    async def revoke_publications(
        self, build_id: str, tenant: str, publish: Publish, reason: str = ""
    ) -> Revocation:
        """Hides or deactivates (as revoke_how says of the recipe target's
        retire) every Glance image the tenant's publications of the build
        made, and deprecates their marketplace entries. Idempotent: what is
        retired already is retired again harmlessly; one failure does not
        keep the rest from being done."""
        hows = {
            target_name(t.cloud, t.region, t.name): revoke_how(t.retire) for t in publish.glance
        }
        done = Revocation()
        for pub in await self.list_publications(build_id=build_id):
            if pub.tenant != tenant:
                continue  # another tenant's publication naming this id is not this build's
            for r in pub.results:
                if r.state in (PENDING, RUNNING):
                    # Still being published: tried again once it ended, so
                    # what it makes does not stay in use.
                    done.failed.append(f"publication {pub.id} is still publishing {r.target}")
                    continue
                if r.state != DONE:
                    continue
                if r.kind == "glance" and r.image_id:
                    how = hows.get(r.target, "hide")
                    await self._revoke_image(r, how, build_id, reason, done)
                elif r.kind == "marketplace" and r.entry_identifier:
                    await self._revoke_entry(r, done)
        return done

    async def _revoke_image(
        self, r: Result, how: str, build_id: str, reason: str, done: Revocation
    ) -> None:
        if self.glance is None:
            done.failed.append(f"image {r.image_id}: Glance is not configured here")
            return
        try:
            await self.glance.retire(r.cloud, r.region or None, r.image_id, how)
        except NotFound:
            return  # gone already (rotation deleted it): nothing left to show
        except KilnError as exc:
            log.warning("revoking image %s in %s failed: %s", r.image_id, r.cloud, exc)
            done.failed.append(f"image {r.image_id} in {r.cloud}: {exc}")
            return
        done.images.append((r.image_id, how))
        await self.events.publish(
            "image.revoked",
            r.image_id,
            {"image_id": r.image_id, "cloud": r.cloud, "region": r.region,
             "name": r.image_name, "how": how, "why": "build revoked",
             "build_id": build_id, "reason": reason},
        )  # fmt: skip

    async def _revoke_entry(self, r: Result, done: Revocation) -> None:
        if self.market is None:
            done.failed.append(f"entry {r.entry_identifier}: the marketplace is off here")
            return
        try:
            # Market.deprecate announces entry.deprecated itself, once.
            await self.market.deprecate(r.entry_identifier, r.target or None)
        except NotFound:
            return
        except KilnError as exc:
            log.warning("deprecating entry %s failed: %s", r.entry_identifier, exc)
            done.failed.append(f"entry {r.entry_identifier}: {exc}")
            return
        done.entries.append(r.entry_identifier)

    # ---- marketplace ---------------------------------------------------------------

    def _market(self) -> Market:
        if self.market is None:
            raise FailedPrecondition("the marketplace is turned off on this publisher")
        return self.market

    async def search(self, query: Query) -> list[SignedEntry]:
        return await self._market().search(query)

    async def get_entry(self, identifier: str) -> SignedEntry:
        return await self._market().get(identifier)

    async def locate(self, entry: Entry) -> str:
        """A download URL of the entry's artifact signed now: entries outlive
        the storage URLs signed into their locations."""
        return await self.storage.url(entry.artifact_id, self.url_seconds)

    async def fresh_location(self, entry: Entry) -> str:
        """locate(), or '' where this storage service cannot give one quickly
        (an entry about an artifact stored elsewhere, storage down): the
        entry's own locations may still serve, and a caller of GetEntry must
        not wait out the storage client's retries for an extra."""
        try:
            return await asyncio.wait_for(self.locate(entry), FRESH_LOCATION_SECONDS)
        except (KilnError, TimeoutError) as exc:
            log.info(
                "no fresh location for entry %s: %s", entry.identifier, str(exc) or "timed out"
            )
            return ""

    async def deprecate(self, identifier: str, endorser: str | None) -> SignedEntry:
        return await self._market().deprecate(identifier, endorser)

    # ---- bases for the builder -----------------------------------------------------

    async def open_glance(
        self, cloud: str, region: str | None, image_id: str
    ) -> tuple[int, str, AsyncIterator[bytes]]:
        if self.glance is None:
            raise FailedPrecondition("this publisher has no clouds.yaml: Glance is not configured")
        if not self.tenants.of(owner()).cloud(cloud):
            # A cloud the tenant may not publish to holds nothing for it.
            raise NotFound(f"{where(cloud, region)}: image {image_id} not found")
        return await self.glance.open_image(cloud, region, image_id)


def labelled_id(build_id: str, record: Build | None) -> str:
    """The build id its artifacts carry: a result-cache hit's are the
    artifacts of the build it was cached from (its record's cached_from)."""
    return record.cached_from if record is not None and record.cached_from else build_id
