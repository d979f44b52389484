"""The Channels API's transport-free core, and what the rest of the builder
asks of channels: a succeeded build's number and version, `latest` following
new builds, channel bases resolved to a build, revocation.

A channel is per tenant and recipe name. Every move is a compare-and-set on
the name's entry (channels.store) and announced as a `channel.moved` event,
which the publisher follows for channel-following Glance targets."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Set as AbstractSet

from kiln_builder.service.channels import rules
from kiln_builder.service.channels.store import ChannelStore
from kiln_builder.service.core import BuilderCore
from kiln_common.auth.identity import caller, owner
from kiln_common.builds import Build, BuildState
from kiln_common.channels import (
    KILN,
    LATEST,
    Channel,
    ChannelRequirement,
    check_channel,
    check_name,
    check_version,
    image_version,
)
from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound
from kiln_common.events import Publisher
from kiln_common.ids import ID_RE
from kiln_common.lifecycle import now
from kiln_recipe import RecipeError, bundle

log = logging.getLogger(__name__)

MAX_REQUIRE_SECONDS = 366 * 86400
Ids = AbstractSet[str]  # (`set` is a method's name below)
PAGE = 500
MAX_REASON = 500  # characters: the reason goes into every revoked record and event


class ChannelCore:
    def __init__(self, builds: BuilderCore, store: ChannelStore, events: Publisher) -> None:
        self.builds = builds
        self.store = store
        self.events = events

    # ---- reading ----------------------------------------------------------------------

    async def list(self, name: str) -> builtins.list[Channel]:
        return await self.store.channels(owner(), check_name(name))

    async def get(self, name: str, channel: str) -> Channel:
        check_channel(channel)
        for found in await self.list(name):
            if found.channel == channel:
                return found
        raise NotFound(f"{name} has no channel {channel}")

    # ---- moving -----------------------------------------------------------------------

    async def set(self, name: str, channel: str, target: str) -> Channel:
        """Points the channel at a build of the name (by id or image version),
        if it passed its checks and tests and sat where the channel requires."""
        check_name(name)
        check_channel(channel)
        if channel == LATEST:
            raise InvalidArgument("latest follows every new build by itself: set another channel")
        build = await self._target(name, target)
        why = rules.refusal(build, await self._recipe_tests(build))
        if why:
            raise FailedPrecondition(f"{why}: only a build whose checks and test commands"
                                     f" passed enters {channel}")  # fmt: skip
        tenant, by, moment = owner(), _who(), now()
        refused: builtins.list[str] = []

        def change(channels: builtins.list[Channel]) -> bool:
            refused.clear()
            ch = rules.channel_of(channels, name, channel)
            why = rules.wait_refusal(channels, ch, build.id, moment)
            if why:
                refused.append(why)
                return False
            return rules.move(ch, build, "set", by, moment)

        channels, changed = await self.store.mutate(tenant, name, change)
        if refused:
            raise FailedPrecondition(refused[0])
        moved = rules.channel_of(channels, name, channel)
        if not changed:
            return moved
        if (await self.builds.records.get(build.id)).revoked is not None:
            # Revoked while it was being set: the revocation's fall-back may
            # have run before this move, so it is done again here.
            await self._fall_back(tenant, name, {build.id})
            raise FailedPrecondition(f"build {build.id} was revoked meanwhile")
        await self._announce(tenant, moved, build, by)
        return moved

    async def set_policy(
        self, name: str, channel: str, requires: ChannelRequirement | None
    ) -> Channel:
        check_name(name)
        check_channel(channel)
        if requires is not None and requires.channel:
            check_channel(requires.channel)
            if requires.channel == channel:
                raise InvalidArgument(f"{channel} cannot require itself")
            if not 0 <= requires.seconds <= MAX_REQUIRE_SECONDS:
                raise InvalidArgument("requires.seconds: from 0 to 366 days")
        wanted = requires if requires is not None and requires.channel else None
        if wanted is not None and channel == LATEST:
            raise InvalidArgument("latest follows every new build: it cannot require a wait")

        cycle: builtins.list[str] = []

        def change(channels: builtins.list[Channel]) -> bool:
            ch = rules.channel_of(channels, name, channel)
            if ch.requires == wanted:
                return False
            cycle[:] = rules.cycle(channels, channel, wanted)
            if cycle:
                return False
            ch.requires = wanted
            return True

        channels, _ = await self.store.mutate(owner(), name, change)
        if cycle:
            raise FailedPrecondition("no build could ever enter: " + " requires ".join(cycle))
        return rules.channel_of(channels, name, channel)

    async def follow(self, build: Build) -> None:
        """`latest` moves to a new succeeded build of the name (not a result-
        cache hit: its image is one latest had). It only moves forward: a
        build that ends after a newer one does not take latest back (checked
        inside the compare-and-set, so two builds ending at once agree)."""
        if build.cached_from or not build.build_number:
            return
        moment = now()

        def change(channels: builtins.list[Channel]) -> bool:
            ch = rules.channel_of(channels, build.name, LATEST)
            if rules.number_of(ch.version) > build.build_number:
                return False
            return rules.move(ch, build, LATEST, KILN, moment)

        channels, changed = await self.store.mutate(build.tenant, build.name, change)
        if changed:
            moved = rules.channel_of(channels, build.name, LATEST)
            await self._announce(build.tenant, moved, build, KILN)

    async def number(self, build: Build) -> tuple[int, str]:
        """A new build number for the build's name, and the version it makes."""
        number = await self.store.next_number(build.tenant, build.name)
        return number, image_version(build.version, number)

    # ---- channel bases ----------------------------------------------------------------

    async def pointed(self, tenant: str, name: str, channel: str) -> Build:
        """The build a tenant's channel points at: a channel base."""
        found = next((c for c in await self.store.channels(tenant, name)
                      if c.channel == channel), None)  # fmt: skip
        if found is None or not found.build_id:
            raise FailedPrecondition(f"from.image.channel: {name}/{channel} points at no build")
        build = await self.record(found.build_id)
        if build is None or build.tenant != tenant or build.revoked is not None:
            raise FailedPrecondition(f"from.image.channel: {name}/{channel}'s build "
                                     f"{found.build_id} is gone or revoked")  # fmt: skip
        return build

    # ---- revoking ---------------------------------------------------------------------

    async def revoke(
        self, name: str, version: str, *, descendants: bool = False, reason: str = ""
    ) -> tuple[builtins.list[str], builtins.list[Channel]]:
        """Revokes every build of the name with that version (the build and
        its result-cache copies), and with descendants every build made from
        them at any depth; each channel holding one falls back. Returns the
        builds revoked by this call and the channels that moved."""
        check_name(name)
        if len(reason) > MAX_REASON:
            raise InvalidArgument(f"reason: at most {MAX_REASON} characters")
        tenant = owner()
        version = await self._version_of(name, version)
        # Every name's builds only when descendants are wanted (one listing either way).
        builds = await self._succeeded(tenant, "" if descendants else name)
        chosen = {b.id for b in builds if b.name == name and b.image_version == version}
        if not chosen:
            raise NotFound(f"{name} has no succeeded build with version {version}")
        if descendants:
            chosen |= {b.id for b in builds if chosen & set(b.ancestry)}
        why = reason or f"{name} {version} revoked" + (
            " with its descendants" if descendants else ""
        )
        revoked = await self._mark(sorted(chosen), why)
        moved: builtins.list[Channel] = []
        for each in sorted({b.name for b in await self._records(chosen)}):
            moved += await self._fall_back(tenant, each, chosen)
        return revoked, moved

    async def _version_of(self, name: str, target: str) -> str:
        """A version as given, or a build id's version: revoking a build
        revokes its version, so its result-cache copies (the same image) too."""
        if not ID_RE.fullmatch(target):
            return check_version(target)
        build = await self.builds.get(target)  # NOT_FOUND for another tenant's
        if build.name != name or not build.image_version:
            raise InvalidArgument(f"build {target} is not a versioned build of {name}")
        return build.image_version

    async def _mark(self, ids: builtins.list[str], reason: str) -> builtins.list[str]:
        """Marks the builds revoked; returns those this call marked. build.revoked
        is sent for every one, marked now or before: a revocation whose event
        was lost (the pod died after the mark) is finished by revoking again."""
        moment, newly = now(), []
        for build_id in ids:

            def mark(build: Build) -> bool:
                if build.revoked is not None:
                    return False
                build.revoked, build.revoked_reason = moment, reason
                return True

            build, changed = await self.builds.records.mutate(build_id, mark)
            if changed:
                newly.append(build_id)
            await self.events.publish("build.revoked", build_id, {
                "id": build_id, "name": build.name, "version": build.version,
                "image_version": build.image_version, "reason": build.revoked_reason,
                "tenant": build.tenant, "cached_from": build.cached_from,
            })  # fmt: skip
        return newly

    async def _fall_back(self, tenant: str, name: str, revoked: Ids) -> builtins.list[Channel]:
        """Every channel of the name holding a revoked build goes back to the
        newest build it held before that is still whole, else to nothing."""
        moved: builtins.list[Channel] = []
        for ch in await self.store.channels(tenant, name):
            if ch.build_id in revoked:
                back = await self._first_whole(rules.fallback_ids(ch, revoked))
                there = await self._move_back(tenant, name, ch.channel, revoked, back)
                moved += [there] if there is not None else []
        return moved

    async def _move_back(
        self, tenant: str, name: str, channel: str, revoked: Ids, back: Build | None
    ) -> Channel | None:
        moment, by = now(), _who()

        def change(channels: builtins.list[Channel]) -> bool:
            there = rules.channel_of(channels, name, channel)
            if there.build_id not in revoked:
                return False  # moved meanwhile
            return rules.move(there, back, "fallback" if back else "revoked", by, moment)

        channels, changed = await self.store.mutate(tenant, name, change)
        if not changed:
            return None
        there = rules.channel_of(channels, name, channel)
        if back is not None:
            await self._announce(tenant, there, back, by)
        return there

    async def _first_whole(self, ids: builtins.list[str]) -> Build | None:
        for build_id in ids:
            build = await self.record(build_id)
            if build is not None and build.state == BuildState.SUCCEEDED and not build.revoked:
                return build
        return None

    # ---- helpers ----------------------------------------------------------------------

    async def _target(self, name: str, target: str) -> Build:
        """A build of the name, by id or image version (the version's first
        build: not a result-cache copy, whose image is the same)."""
        if ID_RE.fullmatch(target):
            build = await self.builds.get(target)  # NOT_FOUND for another tenant's
            if build.name != name:
                raise InvalidArgument(f"build {target} is of {build.name}, not {name}")
            return build
        check_version(target)
        found = [b for b in await self._succeeded(owner(), name) if b.image_version == target]
        if not found:
            raise NotFound(f"{name} has no succeeded build with version {target}")
        return min(found, key=lambda b: (bool(b.cached_from), b.id))

    async def _recipe_tests(self, build: Build) -> bool:
        """Whether the build's recipe asks for a boot test (its commands run in it)."""
        try:
            source = await self.builds.recipe_of(build.id)
            recipe, _ = await asyncio.to_thread(bundle.check, source)
        except (NotFound, RecipeError):
            return True  # not kept: assume it asked, so only a tested build enters
        return recipe.test.boot is not None

    async def _succeeded(self, tenant: str, name: str = "") -> builtins.list[Build]:
        """Every succeeded build of the tenant, of one recipe name unless ""
        (ListBuilds' index, page by page)."""
        found: builtins.list[Build] = []
        token = ""
        while True:
            page, token = await self.builds.list(BuildState.SUCCEEDED, name, PAGE, token)
            found += [b for b in page if b.tenant == tenant]
            if not token:
                return found

    async def record(self, build_id: str) -> Build | None:
        """Any tenant's build record (None: no such build): the caller checks whose."""
        try:
            return await self.builds.records.get(build_id)
        except NotFound:
            return None

    async def _records(self, ids: Ids) -> builtins.list[Build]:
        return [b for i in sorted(ids) if (b := await self.record(i)) is not None]

    async def _announce(self, tenant: str, ch: Channel, build: Build, by: str) -> None:
        previous = next((m.build_id for m in reversed(ch.history[:-1]) if m.build_id), "")
        await self.events.publish("channel.moved", build.id, {
            "name": ch.name, "channel": ch.channel, "version": build.image_version,
            "previous": previous, "tenant": tenant, "by": by,
        })  # fmt: skip
        log.info("channel %s/%s -> build %s (%s)", ch.name, ch.channel, build.id,
                 build.image_version)  # fmt: skip


def _who() -> str:
    who = caller()
    return who.subject if who is not None else KILN
