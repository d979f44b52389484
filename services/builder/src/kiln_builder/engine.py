"""The build engine: a recipe becomes checked, bootable image files.

Steps, each timed and reported: bootstrap -> packages -> files -> run ->
sysprep (each a layer keyed by its inputs and its parent, reused when cached)
-> disk -> outputs -> boot test. The steps' own code is in kiln_builder.stages;
Bake plans them, chains and caches the layers, and holds the build's state.
Every privileged resource is held by a context manager on one
AsyncExitStack-like path, so a failure or a cancel releases it; a failed
workspace is kept only when asked for."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln_builder import checks, disk, layers
from kiln_builder.base import fetch, layout
from kiln_builder.bootstrap import bootstrap, spec_for
from kiln_builder.checks import CheckReport
from kiln_builder.egress import Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.imageroot import ImageRoot
from kiln_builder.outputs import TREE_FORMATS, write_outputs
from kiln_builder.resources import claim, keep, reclaim
from kiln_builder.sbom import package_manifest, spdx_document, write_sbom
from kiln_builder.stages import base as base_stage
from kiln_builder.stages import boot_test, edits, in_appliance
from kiln_builder.stages.model import (
    APPLIANCE_STEPS,
    DEFAULT_EPOCH,
    BakeOptions,
    BakeResult,
    BaseImage,
    PlannedLayer,
    Progress,
    StepFailed,
    StepRecord,
    in_step,
)
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
        self.rootdir = self.work / "root"
        remote = layers.RemoteLayers(options.storage) if options.storage else None
        self.layers = layers.LayerStore(options.cache_dir / "layers", remote)
        # Disk and filesystem UUIDs derive from this: the same image gets the
        # same ids whatever its publish or test settings say.
        self.seed = f"{recipe.name}/{recipe.version}"
        self.isolation = "vm" if options.force_vm else recipe.isolation
        self.isolation_reason = options.force_vm_why if options.force_vm else "the recipe's"
        self.appliance_accel: Any = None
        self._prepared = False
        self.check_report: CheckReport | None = None
        self._partitioned: bool | None = None  # a customised base's layout, once found
        self.route: Route | None = None  # the egress proxy's, while the build runs

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
        record.seconds = round(time.monotonic() - started, 2)
        self.progress(record, "done")

    def edit_steps(self) -> list[tuple[str, Any, Callable[[], Any]]]:
        """(step, inputs, action) for each step that changes the image's tree and
        has something to do (a step with nothing to do is left out)."""
        recipe, act = self.recipe, functools.partial
        steps: list[tuple[str, Any, Callable[[], Any]]] = [
            ("packages", edits.packages(self), act(edits.install_packages, self)),
            ("files", edits.file_inputs(recipe), act(edits.write_files, self)),
            ("run", edits.run_inputs(recipe), act(edits.run_scripts, self)),
            ("sysprep", list(recipe.sysprep_operations()), act(edits.sysprep, self)),
        ]
        return [step for step in steps if step[1]]

    def _layer_plan(self) -> list[PlannedLayer]:
        """Each cached step, keys chained. In vm mode packages, files and run are
        one appliance boot (a hand-back of the whole tree each would cost about
        half a minute under TCG), whose layer is the last one's."""
        boot = self.recipe.from_.bootstrap
        assert boot is not None
        spec = spec_for(
            boot.distro,
            boot.release,
            boot.arch,
            boot.mirror,
            self.opts.epoch,
            self.opts.default_mirror,
        )
        target = self.layers.path("bootstrap", spec.key())
        boot_action = lambda: bootstrap(spec, target, self._proxy_env())  # noqa: E731
        out = [PlannedLayer("bootstrap", "bootstrap", spec.key(), boot_action)]
        key = spec.key()
        in_vm: list[str] = []
        for name, inputs, action in self.edit_steps():
            key = layers.chain_key(key, name, inputs)
            if self.isolation == "vm" and name in APPLIANCE_STEPS:
                in_vm.append(name)
                names = tuple(in_vm)
                out = [p for p in out if p.name != "appliance"]
                action = functools.partial(in_appliance.in_vm, self, names)
                out.append(PlannedLayer("appliance", name, key, action))
            else:
                out.append(PlannedLayer(name, name, key, action))
        return out

    def _proxy_env(self) -> dict[str, str]:
        """apt's proxy variables: the build's egress proxy."""
        assert self.route is not None, "the egress proxy runs while the build does"
        return {"http_proxy": self.route.proxy, "https_proxy": self.route.proxy, "no_proxy": ""}

    def vm_edits(self) -> bool:
        """A customised build in vm mode runs packages, files, run and sysprep in
        one appliance boot on the base's own disk, which the host never mounts."""
        return self.customising and self.isolation == "vm"

    async def _deepest_cached(self, plan: list[PlannedLayer]) -> tuple[int, Path | None]:
        """How many steps a cached layer covers, and that layer (verified)."""
        if self.opts.no_cache:
            return 0, None
        for index in reversed(range(len(plan))):
            layer_name, key = plan[index].layer, plan[index].key
            if await self.layers.available(layer_name, key):
                layer = await self.layers.fetch(layer_name, key)
                if layer is not None:
                    return index + 1, layer
        return 0, None

    async def _layers(self) -> None:
        plan = self._layer_plan()
        start, cached = await self._deepest_cached(plan)
        for index, step in enumerate(plan):
            async with self.step(step.name, step.key) as record:
                if index < start:
                    record.cached = True
                    if index == start - 1 and cached is not None:
                        await layers.extract(cached, self.rootdir)
                    continue
                await step.action()
                if step.name == "bootstrap":  # mmdebstrap wrote the layer itself
                    await self.layers.adopt(step.layer, step.key)
                    await layers.extract(self.layers.path(step.layer, step.key), self.rootdir)
                else:
                    await self.layers.save(step.layer, step.key, self.rootdir, self.opts.epoch)

    def booting(self) -> bool:
        return self.opts.boot_test and self.recipe.test.boot is not None

    def _needs_disk(self) -> bool:
        """Only tree outputs (tar, bare filesystems) and no boot test: no disk."""
        return self.booting() or any(o.format not in TREE_FORMATS for o in self.recipe.outputs)

    def plan(self) -> list[str]:
        """The names of the steps this bake will run, in order."""
        if self.customising:
            edits = [name for name, _, _ in self.edit_steps()]
            if self.vm_edits():  # one boot runs them all, and hands the tree back
                edits = ["appliance"]
            names = ["base", *edits]
            names += ["checks"] if self.recipe.checks else []
            names.append("outputs")
        else:
            names = [step.name for step in self._layer_plan()]
            names += ["checks"] if self.recipe.checks else []
            names += ["disk", "outputs"] if self._needs_disk() else ["outputs"]
        if self.booting():
            names.append("boot-test")
        return names

    async def _prepare_tree(self) -> None:
        """fstab, kernel command line and GRUB configuration, and normalised
        timestamps: the same tree whether a disk is made of it or not."""
        if self._prepared:  # done already for the checks step
            return
        self._prepared = True
        recipe = self.recipe
        with ImageRoot(self.rootdir) as tree:
            disk.configure_boot(
                tree,
                fs_type=recipe.disk.filesystem,
                fs_uuid=disk.derived_uuid(self.seed, "rootfs"),
                title=f"{recipe.name} {recipe.version}",
                partitioning=recipe.disk.partitioning,
            )
            if self._needs_disk():
                disk.stage_grub(tree)
            await asyncio.to_thread(disk.normalise_tree, tree, self.opts.epoch)

    async def _disk(self) -> Path:
        recipe = self.recipe
        fs_uuid = disk.derived_uuid(self.seed, "rootfs")
        image = self.work / "disk.raw"
        async with self.step("disk"):
            await self._prepare_tree()
            layout = await disk.partition(
                image, recipe.disk.size, recipe.disk.partitioning, self.seed
            )
            await disk.make_root_fs(image, layout, self.rootdir, recipe.disk.filesystem,
                                    fs_uuid, self.opts.epoch)  # fmt: skip
            await disk.install_grub(image, layout, recipe.disk.filesystem, fs_uuid, self.work)
        return image

    def _not_yet(self) -> list[str]:
        """Recipe parts this engine validates but does not act on yet."""
        # publish: is the publisher's (it acts on build.succeeded).
        return []

    @property
    def _stem(self) -> str:
        return f"{self.recipe.name}-{self.recipe.version}"

    async def make_outputs(self, image: Path) -> BakeResult:
        """The recipe's output files and the SBOM, from the disk and the tree."""
        async with self.step("outputs"):
            outputs = await write_outputs(
                disk=image, rootfs=self.rootdir, specs=self.recipe.outputs,
                out_dir=self.opts.out_dir, stem=self._stem, source_date_epoch=self.opts.epoch,
                fs_uuid=disk.derived_uuid(self.seed, "rootfs"),
            )  # fmt: skip
            sbom = self.opts.out_dir / f"{self._stem}.spdx.json"
            write_sbom(sbom, spdx_document(package_manifest(self.rootdir), name=self._stem,
                                           namespace_seed=self.recipe.digest(),
                                           created_epoch=self.opts.epoch))  # fmt: skip
        return BakeResult(
            outputs,
            sbom,
            self.steps,
            base=self.base,
            checks=self.check_report,
            isolation=self.isolation,
            appliance_accel=self.appliance_accel,
        )

    async def _from_scratch(self) -> tuple[Path, BakeResult]:
        await self._layers()
        if self.recipe.checks:
            await self.run_checks()
        image = await self._disk() if self._needs_disk() else self.work / "no-disk"
        if not self._needs_disk():
            await self._prepare_tree()
        if self.booting():
            with ImageRoot(self.rootdir) as tree:
                base_stage.copy_kernels(tree, self.work / "kernel")
        return image, await self.make_outputs(image)

    def _runs_user_code(self) -> bool:
        """Whether a step would run the recipe's code (packages, run) here."""
        return any(name in ("packages", "run") for name, _, _ in self.edit_steps())

    async def run(self) -> BakeResult:
        log.info("isolation: %s (%s)", self.isolation, self.isolation_reason)
        if self.isolation == "sandbox" and self.opts.sandbox_refused and self._runs_user_code():
            raise FailedPrecondition(
                f"{self.opts.sandbox_refused}; ask for `isolation: vm` in the recipe"
            )
        for part in self._not_yet():
            log.warning("the recipe's %s are not run by this version of the builder", part)
        if self.recipe.test.commands and not self.booting():
            # A recipe that asks for test commands never succeeds without running them.
            raise FailedPrecondition(
                "the recipe's test.commands run in the boot test, which this build skips"
                " (--no-boot-test, or the builder's boot_test setting is off)"
            )
        claim(self.work)
        self.work.chmod(0o700)  # a tree may hold setuid files and device nodes: root's only
        self.opts.out_dir.mkdir(parents=True, exist_ok=True)
        ok = False
        try:
            async with EgressProxy(self.opts.egress) as proxy:
                self.route = Route(self.opts.egress, proxy.url)
                await self._check_mirror()
                if self.customising:
                    image, result = await self._customised()
                else:
                    image, result = await self._from_scratch()
            if self.booting():
                await boot_test.run(self, image, result)
            ok = True
            for layer in self.layers.prune(self.opts.cache_max_bytes):
                log.info("pruned layer %s", layer.name)
            for base in fetch.prune_bases(self.opts.cache_dir, self.opts.cache_max_bytes):
                log.info("pruned base image %s", base.name)
            return result
        finally:
            await reclaim(self.work)  # whatever a failure left mounted or attached
            if ok or not (self.opts.keep_workspace or self.recipe.keep_workspace):
                # In a thread: a large tree takes seconds, and the event loop
                # must keep heartbeating the build's queue message meanwhile.
                await asyncio.to_thread(shutil.rmtree, self.work, ignore_errors=True)
            else:
                keep(self.work, f"build {self.opts.build_id} failed")
                log.warning("keeping the failed build's workspace: %s", self.work)

    async def _check_mirror(self) -> None:
        """The recipe's own mirror, refused at once if the egress policy forbids
        it (the proxy would refuse each of apt's requests, less readably)."""
        boot = self.recipe.from_.bootstrap
        if boot is not None and boot.mirror:
            await self.opts.egress.check_url(boot.mirror, "from.bootstrap.mirror")

    async def run_checks(self) -> None:
        """Requirement checks on the finished tree, before any disk or output is
        made of it: a from-scratch tree gets its boot configuration first."""
        async with self.step("checks"):
            if not self.customising:
                await self._prepare_tree()
            report_file = self.opts.out_dir / f"{self._stem}.checks.json"
            facts = checks.facts_for(self.recipe, self._partitioned)
            try:
                self.check_report = await checks.check_tree(
                    self.rootdir, self.recipe, report_file, facts
                )
            except checks.ChecksFailed as exc:
                self.check_report = exc.report  # the build record keeps every result
                raise

    # ---- customising an existing image -----------------------------------------------

    async def _customised(self) -> tuple[Path, BakeResult]:
        """The base's own disk, changed in place: its partitions, filesystems and
        bootloader stay as they were. Attached and scanned once, held to the end."""
        image = self.work / "disk.raw"
        async with contextlib.AsyncExitStack() as stack:
            found, grew, held = await base_stage.open_base(self, image, stack)
            self._partitioned = not found.bare
            if held is None:  # vm isolation: the host opens nothing
                return image, await in_appliance.customised_in_vm(self, image, found, grew)
            mnt = self.work / "mnt"
            async with layout.opened(held, found, mnt) as root:
                self.rootdir = root
                with ImageRoot(root) as tree:
                    self.distro = base_stage.distro_of(tree)
                for name, _, action in self.edit_steps():
                    async with self.step(name):
                        await action()
                if self.recipe.checks:
                    await self.run_checks()
                if self.booting():
                    with ImageRoot(root) as tree:
                        base_stage.copy_kernels(tree, self.work / "kernel")
            # Unmounted cleanly (journal closed) before its bytes are converted;
            # read back read-only for the tree outputs and the SBOM.
            async with layout.opened(held, found, mnt, read_only=True) as root:
                self.rootdir = root
                result = await self.make_outputs(image)
        return image, result


def summary(steps: Sequence[StepRecord]) -> str:
    return ", ".join(f"{s.name} {'(cached) ' if s.cached else ''}{s.seconds:.1f}s" for s in steps)
