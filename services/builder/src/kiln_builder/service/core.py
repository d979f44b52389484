"""The Builder's transport-free core: submit, read, list, watch and cancel
builds, and check recipes. Records, updates and the queue live in NATS
JetStream, so every pod gives the same answers."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from kiln_builder.service import queue, updates

if TYPE_CHECKING:
    from kiln_builder.service.channels.core import ChannelCore
from kiln_builder.service.index import BuildIndex, Wanted
from kiln_builder.service.records import BuildRecords, missing, same_recipe
from kiln_client import wire
from kiln_common import jetstream, lifecycle
from kiln_common.auth.identity import Verb, allowed, caller, owner, scope, visible
from kiln_common.auth.quotas import Quotas, check
from kiln_common.builds import Build, BuildState, BuildUpdate
from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from kiln_common.events import Publisher
from kiln_common.ids import check_id, new_id
from kiln_common.lifecycle import STATES, TERMINAL, now
from kiln_recipe import RecipeError, bundle
from kiln_recipe.schema import Recipe
from kiln_recipe.source import RecipeSource, Validation

log = logging.getLogger(__name__)

RECIPES_BUCKET = "kiln_recipes"
RECIPE_TTL_SECONDS = 90 * 24 * 3600
DEFAULT_PAGE = 50
MAX_PAGE = 500
_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
Page = tuple[list[Build], str]  # builds, newest first, and the next page's token


def event_data(build: Build, **extra: Any) -> dict[str, Any]:
    return {
        "id": build.id,
        "name": build.name,
        "version": build.version,
        "state": lifecycle.word(build.state),
        **extra,
    }


def may_publish(recipe: Recipe) -> None:
    """A recipe with a publish: section publishes its image once built (the
    publisher does so on its own): only a caller who may publish submits it."""
    who = caller()
    if recipe.publish.targets and who is not None and not allowed(who, Verb.PUBLISH):
        raise PermissionDenied(
            f"the recipe's publish: section publishes the image, which the {who.role}"
            " role may not do (ask a publisher, or leave publish: out)"
        )


@dataclass
class Nats:
    """The NATS pieces a core and its workers share."""

    nc: NatsClient
    js: JetStreamContext
    records: BuildRecords
    recipes: ObjectStore
    policy: queue.QueuePolicy

    @classmethod
    async def open(cls, nc: NatsClient, policy: queue.QueuePolicy, replicas: int = 1) -> Nats:
        js = nc.jetstream()
        await queue.ensure(js, policy, replicas)
        await updates.ensure_stream(js, replicas)
        recipes = await jetstream.object_store(
            js, RECIPES_BUCKET, ttl=RECIPE_TTL_SECONDS, replicas=replicas
        )
        return cls(nc, js, await BuildRecords.open(js, replicas), recipes, policy)


class BuilderCore:
    def __init__(
        self, nats: Nats, events: Publisher, index: BuildIndex | None = None,
        quotas: Quotas | None = None,
    ) -> None:  # fmt: skip
        self.nats = nats
        self.records = nats.records
        self.events = events
        self.index = index
        self.quotas = quotas or Quotas({})
        self._queues: set[str] = set()  # tenants whose queue this pod has made sure of
        self.channels: ChannelCore | None = None  # set by the app: versions and channels

    # ---- recipes ---------------------------------------------------------------------

    def validate(self, source: RecipeSource) -> Validation:
        try:
            recipe, digest = bundle.check(source)
        except RecipeError as exc:
            return Validation(valid=False, problems=bundle.problems(exc))
        return Validation(valid=True, name=recipe.name, version=recipe.version, digest=digest)

    async def recipe_of(self, build_id: str) -> RecipeSource:
        await self.get(build_id)  # NOT_FOUND for another tenant's
        try:
            found = await self.nats.recipes.get(build_id)
        except ObjectNotFoundError:
            raise NotFound(f"the recipe of build {build_id} is no longer kept") from None
        return wire.recipe_from_bytes(found.data or b"")

    # ---- builds ----------------------------------------------------------------------

    async def submit(
        self, source: RecipeSource, key: str = "", *, no_cache: bool = False,
        skip_boot_test: bool = False, schedule: tuple[str, int] | None = None,
    ) -> Build:  # fmt: skip
        """schedule: the schedule and run number that submit it, if one does."""
        if key and not _KEY_RE.match(key):
            raise InvalidArgument("idempotency_key: 1 to 128 printable ASCII characters")
        recipe, digest = bundle.check(source)  # RecipeError: INVALID_ARGUMENT
        may_publish(recipe)
        tenant = owner()
        if key and (earlier := await self.records.bound(tenant, key)):
            # A retry of a submit that got through: its build, quota or not.
            return same_recipe(await self._wait_created(earlier), digest)
        await self._check_queued(tenant)  # nothing is stored past a quota
        build = Build(
            id=new_id(),
            state=BuildState.QUEUED,
            name=recipe.name,
            version=recipe.version,
            recipe_digest=digest,
            idempotency_key=key,
            created=now(),
            no_cache=no_cache,
            skip_boot_test=skip_boot_test,
            tenant=tenant,
            schedule_id=schedule[0] if schedule else "",
            schedule_run=schedule[1] if schedule else 0,
        )
        if key:
            existing = await self.records.claim_key(build.tenant, key, build.id)
            if existing is not None:
                return same_recipe(await self._wait_created(existing), digest)
        # Recipe first, record second, queue last: a worker never sees a build
        # id whose record or recipe is missing.
        kept = bundle.normalised(source)
        await self.nats.recipes.put(build.id, wire.recipe_bytes(kept))
        await self.records.create(build)
        await self.announce(build)
        await self._enqueue(build)
        await self.events.publish(
            STATES[build.state].event, build.id, event_data(build, recipe_digest=digest)
        )
        log.info("build %s queued: %s %s", build.id, build.name, build.version)
        return build

    async def _enqueue(self, build: Build) -> None:
        if build.tenant not in self._queues:
            await queue.ensure_queue(self.nats.js, self.nats.policy, build.tenant)
            self._queues.add(build.tenant)
        await queue.enqueue(self.nats.js, build.id, build.tenant)

    async def _check_queued(self, tenant: str) -> None:
        """RESOURCE_EXHAUSTED if the tenant has its quota of queued builds."""
        limit = self.quotas.of(tenant).queued_builds
        if limit is None:
            return
        if self.index is not None and await self.index.caught_up():
            queued = self.index.count(tenant, BuildState.QUEUED)
        else:
            queued = len((await self._scan(Wanted(BuildState.QUEUED, "", tenant), MAX_PAGE, ""))[0])
        check(tenant, "queued builds", queued, 1, limit)

    async def _wait_created(self, build_id: str) -> Build:
        """The build a key is bound to; the first submitter may still be
        writing its record, so a missing one is waited for a moment."""
        for _ in range(50):
            try:
                return await self.records.get(build_id)
            except NotFound:
                await asyncio.sleep(0.1)
        raise FailedPrecondition(
            f"idempotency key is bound to build {build_id}, which was never recorded; "
            "submit with another key"
        )

    async def announce(self, build: Build) -> None:
        """A state update on the build's updates stream, the record with it."""
        update = BuildUpdate(build_id=build.id, time=now(), state=build.state, build=build)
        await updates.publish(self.nats.js, update)

    async def get(self, build_id: str) -> Build:
        """The build, if the caller's tenant may see it: another tenant's is
        NOT_FOUND, word for word as an unknown id is."""
        build = await self.records.get(build_id)
        if not visible(build.tenant):
            raise missing(build_id)
        return build

    async def list(
        self, state: BuildState = BuildState.UNSPECIFIED, name: str = "", page_size: int = 0,
        page_token: str = "",
    ) -> Page:  # fmt: skip
        """A page of builds, newest first, and the next page's token ("" at the end)."""
        size = page_size or DEFAULT_PAGE
        if size > MAX_PAGE or size < 0:
            raise InvalidArgument(f"page_size: 0 to {MAX_PAGE}")
        if state and state not in STATES:
            raise InvalidArgument(f"state: unknown build state {int(state)}")
        if page_token:
            check_id(page_token, "page_token")
        wanted = Wanted(state, name, scope())
        if self.index is None or not await self.index.caught_up():
            return await self._scan(wanted, size, page_token)
        # Caught up: the index holds every record as of this call's start.
        return self.index.page(wanted, page_token, size)

    async def _listed(self, build_id: str) -> Build | None:
        try:
            return await self.records.get(build_id)
        except NotFound:
            return None  # removed while we listed

    async def _scan(self, wanted: Wanted, size: int, token: str) -> Page:
        """Every record read: the answer while the index is being rebuilt."""
        builds: list[Build] = []
        for build_id in await self.records.ids():
            if token and build_id >= token:
                continue
            build = await self._listed(build_id)
            if build is None or not wanted.matches(build.state, build.name, build.tenant):
                continue
            if len(builds) == size:
                return builds, builds[-1].id
            builds.append(build)
        return builds, ""

    async def watch(
        self, build_id: str, after_seq: int, stored_only: bool = False
    ) -> AsyncIterator[BuildUpdate]:
        await self.get(build_id)  # NOT_FOUND before the stream starts

        async def ended() -> bool:
            return (await self.records.get(build_id)).state in TERMINAL

        async for update in updates.watch(self.nats.js, build_id, after_seq, ended, stored_only):
            yield update

    async def cancel(self, build_id: str) -> Build:
        # A queued build is cancelled at once (no worker holds it). Its queue
        # message stays, and the worker that takes it sees the record and drops it.
        await self.get(build_id)  # NOT_FOUND for another tenant's
        build, changed = await self.records.mutate(build_id, lifecycle.request_cancel)
        if changed and build.state == BuildState.CANCELLED:
            await self.announce(build)
            await self.events.publish(STATES[build.state].event, build.id, event_data(build))
        elif build.state not in TERMINAL:
            await self.nats.nc.publish(queue.cancel_subject(build_id), b"cancel")
        return build
