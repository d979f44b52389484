"""The build engine: a recipe becomes checked, bootable image files.

A build is a list of stages (kiln_builder.stages, one module each), which
Bake.stages() plans from the recipe and Bake.run() runs in order, each timed
and reported as a step:

  from scratch:  bootstrap -> packages -> files -> run -> sysprep -> checks
                 -> disk -> outputs -> boot-test
  customised:    base -> packages -> files -> run -> sysprep -> checks
                 -> outputs -> boot-test

In vm isolation one appliance stage takes packages, files and run (from
scratch) or every edit (customised). A from-scratch build's first stages are
layered: each is a cached layer keyed by its inputs and its parent's key, and
the deepest cached one is extracted instead of running what it covers. What a
stage holds past its own step is entered into one AsyncExitStack, released
(with whatever a failure left mounted or attached) before the boot test and
on every path; a failed workspace is kept only when asked for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln_builder import layers
from kiln_builder.base import fetch
from kiln_builder.checks import CheckReport
from kiln_builder.egress import Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.outputs import TREE_FORMATS
from kiln_builder.resources import claim, keep, reclaim
from kiln_builder.stages.base import Base, OpenedBase
from kiln_builder.stages.boot_test import BootTest
from kiln_builder.stages.bootstrap import Bootstrap
from kiln_builder.stages.checks import Checks
from kiln_builder.stages.disk import Disk
from kiln_builder.stages.files import Files
from kiln_builder.stages.in_appliance import CustomisedAppliance, TreeAppliance
from kiln_builder.stages.model import (
    APPLIANCE_STEPS,
    DEFAULT_EPOCH,
    BakeOptions,
    BakeResult,
    BaseImage,
    Progress,
    Stage,
    StepFailed,
    StepRecord,
    in_step,
)
from kiln_builder.stages.outputs import Outputs
from kiln_builder.stages.packages import Packages
from kiln_builder.stages.run import Run
from kiln_builder.stages.sysprep import Sysprep
from kiln_common.errors import FailedPrecondition, KilnError
from kiln_common.proc import ProcessError
from kiln_recipe.schema import Recipe

if TYPE_CHECKING:  # the vm package (libvirt) is imported only when a build boots
    from kiln_builder.vm import CommandResult

__all__ = [
    "DEFAULT_EPOCH",
    "Bake",
    "BakeOptions",
    "BakeResult",
    "BaseImage",
    "StepFailed",
    "StepRecord",
    "summary",
]

log = logging.getLogger(__name__)


class Bake:
    def __init__(self, recipe: Recipe, options: BakeOptions, progress: Progress | None = None):
        self.recipe = recipe
        self.customising = recipe.from_.image is not None
        self.base: BaseImage | None = None
        self.distro: str = recipe.from_.bootstrap.distro if recipe.from_.bootstrap else "debian"
        self.opts = options
        self.progress = progress or (lambda step, what: None)
        self.steps: list[StepRecord] = []
        # vm.CommandResult of each test command, filled in place (failures too) so a
        # caller holding the list sees them even when the build fails.
        self.test_commands: list[CommandResult] = []
        self.work = options.work_root / options.build_id
        self.rootdir = self.work / "root"  # the tree the stages change (a base's: its mount)
        self.image = self.work / (
            "disk.raw" if self.customising or self.needs_disk() else "no-disk"
        )
        remote = layers.RemoteLayers(options.storage) if options.storage else None
        self.layers = layers.LayerStore(options.cache_dir / "layers", remote)
        # Disk and filesystem UUIDs derive from this: the same image gets the
        # same ids whatever its publish or test settings say.
        self.seed = f"{recipe.name}/{recipe.version}"
        self.stem = f"{recipe.name}-{recipe.version}"
        self.isolation = "vm" if options.force_vm else recipe.isolation
        self.isolation_reason = options.force_vm_why if options.force_vm else "the recipe's"
        self.appliance_accel: Any = None
        self.prepared = False  # the tree's boot configuration is written (stages.disk)
        self.check_report: CheckReport | None = None
        self.partitioned: bool | None = None  # a customised base's layout, once found
        self.opened: OpenedBase | None = None  # a customised base, once open
        self.route: Route | None = None  # the egress proxy's, while the build runs
        self.result: BakeResult | None = None  # once the outputs are made

    # ---- the plan ---------------------------------------------------------------------

    def booting(self) -> bool:
        return self.opts.boot_test and self.recipe.test.boot is not None

    def needs_disk(self) -> bool:
        """Only tree outputs (tar, bare filesystems) and no boot test: no disk."""
        return self.booting() or any(o.format not in TREE_FORMATS for o in self.recipe.outputs)

    def vm_edits(self) -> bool:
        """A customised build in vm mode runs packages, files, run and sysprep in
        one appliance boot on the base's own disk, which the host never mounts."""
        return self.customising and self.isolation == "vm"

    def edits(self) -> list[Stage]:
        """The stages that change the image's tree and have something to do
        (one with nothing to do is left out)."""
        return [s for s in (Packages(), Files(), Run(), Sysprep()) if s.inputs(self)]

    def layered(self) -> list[Stage]:
        """A from-scratch build's layered stages, keys chained. In vm mode
        packages, files and run are one appliance stage, whose layer is the
        last one's (under the key a sandbox build gives that layer)."""
        boot = Bootstrap(self)
        out: list[Stage] = [boot]
        key, in_vm = boot.key, list[str]()
        for stage in self.edits():
            key = layers.chain_key(key, stage.name, stage.inputs(self))
            if self.isolation == "vm" and stage.name in APPLIANCE_STEPS:
                in_vm.append(stage.name)
                out = [s for s in out if s.name != "appliance"]
                stage = TreeAppliance(in_vm)
            stage.key, stage.layer = key, in_vm[-1] if stage.name == "appliance" else stage.name
            out.append(stage)
        return out

    def stages(self) -> list[Stage]:
        """The stages this bake runs, in order."""
        if self.customising:
            edits = self.edits()
            if self.vm_edits():  # one boot runs them all, and hands the tree back
                edits = [CustomisedAppliance([s.name for s in edits])]
            out: list[Stage] = [Base(), *edits]
        else:
            out = self.layered()
        out += [Checks()] if self.recipe.checks else []
        out += [Disk()] if not self.customising and self.needs_disk() else []
        out.append(Outputs())
        return out + ([BootTest()] if self.booting() else [])

    def plan(self) -> list[str]:
        """The names of the steps this bake will run, in order."""
        return [stage.name for stage in self.stages()]

    # ---- running it ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def step(self, name: str, key: str = "") -> AsyncIterator[StepRecord]:
        record = StepRecord(name, key)
        self.steps.append(record)
        self.progress(record, "start")
        started = time.monotonic()
        try:
            yield record
        except (KilnError, ProcessError) as exc:
            raise in_step(name, exc) from exc
        finally:
            # A failed or cancelled step took its time too (a boot test that
            # failed after 40 s is not 0.0 s in the record).
            record.seconds = round(time.monotonic() - started, 2)
        self.progress(record, "done")

    async def run_stage(self, stage: Stage, held: contextlib.AsyncExitStack) -> StepRecord:
        async with self.step(stage.name, stage.key) as record:
            await stage.run(self, record, held)
            if stage.key:
                await stage.keep(self)
        return record

    async def _run_stages(self, stages: Sequence[Stage], held: contextlib.AsyncExitStack) -> None:
        start, cached = await self._deepest_cached([s for s in stages if s.key])
        for index, stage in enumerate(stages):
            if index >= start:
                await self.run_stage(stage, held)
                continue
            async with self.step(stage.name, stage.key) as record:
                record.cached = True
                if index == start - 1 and cached is not None:
                    await layers.extract(cached, self.rootdir)

    async def _deepest_cached(self, layered: list[Stage]) -> tuple[int, Path | None]:
        """How many stages a cached layer covers, and that layer (verified)."""
        if self.opts.no_cache:
            return 0, None
        for index in reversed(range(len(layered))):
            stage = layered[index]
            if await self.layers.available(stage.layer, stage.key):
                layer = await self.layers.fetch(stage.layer, stage.key)
                if layer is not None:
                    return index + 1, layer
        return 0, None

    def _runs_user_code(self) -> bool:
        """Whether a stage would run the recipe's code (packages, run) here."""
        return any(stage.name in ("packages", "run") for stage in self.edits())

    def _refuse_early(self) -> None:
        if self.isolation == "sandbox" and self.opts.sandbox_refused and self._runs_user_code():
            raise FailedPrecondition(
                f"{self.opts.sandbox_refused}; ask for `isolation: vm` in the recipe"
            )
        if self.recipe.repositories and self.isolation == "vm":
            # The appliance reaches only the mirrors it relays, by host name.
            raise FailedPrecondition(
                "the recipe's repositories are installed from in sandbox isolation only, and"
                f" this build runs in vm isolation ({self.isolation_reason})"
            )
        if self.recipe.test.commands and not self.booting():
            # A recipe that asks for test commands never succeeds without running them.
            raise FailedPrecondition(
                "the recipe's test.commands run in the boot test, which this build skips"
                " (--no-boot-test, or the builder's boot_test setting is off)"
            )

    async def run(self) -> BakeResult:
        log.info("isolation: %s (%s)", self.isolation, self.isolation_reason)
        self._refuse_early()
        stages = self.stages()
        making = [s for s in stages if not isinstance(s, BootTest)]
        claim(self.work)
        self.work.chmod(0o700)  # a tree may hold setuid files and device nodes: root's only
        self.opts.out_dir.mkdir(parents=True, exist_ok=True)
        ok = False
        try:
            async with contextlib.AsyncExitStack() as held:
                proxy = await held.enter_async_context(EgressProxy(self.opts.egress))
                self.route = Route(self.opts.egress, proxy.url)
                await self._check_mirror()
                await self._run_stages(making, held)
            # The image is made and released (unmounted, detached): it boots.
            async with contextlib.AsyncExitStack() as held:
                await self._run_stages(stages[len(making) :], held)
            ok = True
            self._prune()
            assert self.result is not None
            return self.result
        finally:
            await reclaim(self.work)  # whatever a failure left mounted or attached
            if ok or not (self.opts.keep_workspace or self.recipe.keep_workspace):
                # In a thread: a large tree takes seconds, and the event loop
                # must keep heartbeating the build's queue message meanwhile.
                await asyncio.to_thread(shutil.rmtree, self.work, ignore_errors=True)
            else:
                keep(self.work, f"build {self.opts.build_id} failed")
                log.warning("keeping the failed build's workspace: %s", self.work)

    def _prune(self) -> None:
        for layer in self.layers.prune(self.opts.cache_max_bytes):
            log.info("pruned layer %s", layer.name)
        for base in fetch.prune_bases(self.opts.cache_dir, self.opts.cache_max_bytes):
            log.info("pruned base image %s", base.name)

    async def _check_mirror(self) -> None:
        """The recipe's own mirror, refused at once if the egress policy forbids
        it (the proxy would refuse each of apt's requests, less readably)."""
        boot = self.recipe.from_.bootstrap
        if boot is not None and boot.mirror:
            await self.opts.egress.check_url(boot.mirror, "from.bootstrap.mirror")


def summary(steps: Sequence[StepRecord]) -> str:
    return ", ".join(f"{s.name} {'(cached) ' if s.cached else ''}{s.seconds:.1f}s" for s in steps)
