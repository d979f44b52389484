"""The build engine: a recipe becomes checked, bootable image files.

Steps, each timed and reported: bootstrap -> packages -> files -> run ->
sysprep (each a layer keyed by its inputs and its parent, reused when cached)
-> disk -> outputs -> boot test. Every privileged resource is held by a
context manager on one AsyncExitStack-like path, so a failure or a cancel
releases it; a failed workspace is kept only when asked for."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kiln_builder import checks, customize, disk, layers
from kiln_builder.base import fetch, formats, layout
from kiln_builder.bootstrap import bootstrap, spec_for
from kiln_builder.checks import CheckReport
from kiln_builder.egress import STRICT, EgressPolicy, Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.imageroot import ImageRoot
from kiln_builder.outputs import TREE_FORMATS, OutputFile, write_outputs
from kiln_builder.pkgmap import map_packages
from kiln_builder.resources import claim, keep, reclaim
from kiln_builder.sandbox import DEFAULT_POLICY, SandboxPolicy
from kiln_builder.sbom import package_manifest, spdx_document, write_sbom
from kiln_builder.storage import StorageAccess
from kiln_common.digests import file_sha256
from kiln_common.errors import FailedPrecondition, KilnError
from kiln_common.proc import ProcessError
from kiln_recipe.schema import Recipe

if TYPE_CHECKING:  # the vm package (libvirt) is imported only when a build boots
    from kiln_builder.vm import CommandResult

log = logging.getLogger(__name__)

DEFAULT_EPOCH = 1_700_000_000  # SOURCE_DATE_EPOCH when a recipe names none


class StepFailed(FailedPrecondition):
    """A command of a build step failed; the message names the step."""


def _in_step(name: str, exc: Exception) -> Exception:
    """The same kind of error (retryable or not), its message naming the step."""
    message = f"step {name} failed: {exc}"
    if isinstance(exc, KilnError):
        try:
            return type(exc)(message)
        except TypeError:  # an error class with a constructor of its own
            pass
    return StepFailed(message)


@dataclass
class StepRecord:
    name: str
    key: str = ""
    cached: bool = False
    seconds: float = 0.0


# The steps that run the recipe's own content: in vm mode one appliance boot runs them.
APPLIANCE_STEPS = ("packages", "files", "run")


@dataclass(frozen=True)
class PlannedLayer:
    name: str  # the step in the build's record
    layer: str  # its layer's name in the store (the last step an appliance boot ran)
    key: str
    action: Callable[[], Any]


@dataclass(frozen=True)
class BakeOptions:
    out_dir: Path
    work_root: Path
    cache_dir: Path
    build_id: str
    storage: StorageAccess | None = None  # the storage service sharing layers between builders
    publisher: str | None = None  # the publisher: marketplace and glance bases
    no_cache: bool = False
    cache_max_bytes: int = 16 * 1024**3  # local layers beyond this are pruned, oldest use first
    keep_workspace: bool = False
    boot_test: bool = True
    fix_kvm_device: bool = True  # see libvirtd.kvm_device_as_udev_would
    epoch: int = DEFAULT_EPOCH
    force_vm: bool = False  # vm isolation for every recipe (an operator's setting)
    force_vm_why: str = "forced by the builder's setting"  # said in the log and record
    sandbox_refused: str = ""  # why this builder runs no sandbox builds ("" if it does)
    sandbox: SandboxPolicy = DEFAULT_POLICY  # limits on package and recipe commands
    default_mirror: str = ""  # for a recipe naming none; empty: the host's apt source
    egress: EgressPolicy = STRICT  # what the builder's own fetches may reach


@dataclass(frozen=True)
class BaseImage:
    """What a customised build started from, for its record and labels."""

    source: str  # the URL, or artifact:<id>
    sha256: str  # of the bytes as fetched (compressed, if they were)
    description: str  # "qcow2, 2147483648 bytes", "bare ext3 filesystem, bz2-compressed, ..."


@dataclass
class BakeResult:
    outputs: list[OutputFile]
    sbom: Path
    steps: list[StepRecord] = field(default_factory=list)
    console_log: Path | None = None
    boot: Any = None  # the VM runner's BootResult, when the boot test ran
    isolation: str = "sandbox"  # where packages, files and run ran: sandbox | vm
    appliance_accel: Any = None  # vm.Accel the appliance ran under, when one ran
    tests: Path | None = None  # the test commands' results (JSON), when there were any
    base: BaseImage | None = None  # a customised build's base
    checks: CheckReport | None = None  # when the recipe lists checks


Progress = Callable[[StepRecord, str], None]  # (step, "start" | "done")


def _file_inputs(recipe: Recipe) -> list[dict[str, Any]]:
    out = []
    for spec in recipe.files:
        data = spec.content if spec.content is not None else _read_source(recipe, spec.source)
        out.append({"path": spec.path, "data": data, "mode": spec.mode,
                    "owner": spec.owner, "group": spec.group})  # fmt: skip
    return out


def _read_source(recipe: Recipe, source: str | None) -> str:
    assert source is not None
    return "sha256:" + file_sha256(recipe.base_dir / source)  # the key needs its digest only


def _run_inputs(recipe: Recipe) -> list[str]:
    return [
        (recipe.base_dir / step.script).read_text() if step.script else (step.inline or "")
        for step in recipe.run
    ]


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
    async def _step(self, name: str, key: str = "") -> AsyncIterator[StepRecord]:
        record = StepRecord(name, key)
        self.steps.append(record)
        self.progress(record, "start")
        started = time.monotonic()
        try:
            yield record
        except (KilnError, ProcessError) as exc:
            raise _in_step(name, exc) from exc
        record.seconds = round(time.monotonic() - started, 2)
        self.progress(record, "done")

    def _edit_steps(self) -> list[tuple[str, Any, Callable[[], Any]]]:
        """(step, inputs, action) for each step that changes the image's tree and
        has something to do (a step with nothing to do is left out)."""
        steps: list[tuple[str, Any, Callable[[], Any]]] = [
            ("packages", self._packages(), self._install_packages),
            ("files", _file_inputs(self.recipe), self._write_files),
            ("run", _run_inputs(self.recipe), self._run_scripts),
            ("sysprep", list(self.recipe.sysprep_operations()), self._sysprep),
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
        for name, inputs, action in self._edit_steps():
            key = layers.chain_key(key, name, inputs)
            if self.isolation == "vm" and name in APPLIANCE_STEPS:
                in_vm.append(name)
                names = tuple(in_vm)
                out = [p for p in out if p.name != "appliance"]
                action = functools.partial(self._in_vm, names)
                out.append(PlannedLayer("appliance", name, key, action))
            else:
                out.append(PlannedLayer(name, name, key, action))
        return out

    def _proxy_env(self) -> dict[str, str]:
        """apt's proxy variables: the build's egress proxy."""
        assert self.route is not None, "the egress proxy runs while the build does"
        return {"http_proxy": self.route.proxy, "https_proxy": self.route.proxy, "no_proxy": ""}

    async def _in_vm(self, names: Sequence[str]) -> None:
        """Runs steps of a from-scratch build in one appliance boot, on the tree
        (docs/isolation.md)."""
        from kiln_builder import appliance

        packages = self._packages()
        steps = tuple(s for n in names for s in appliance.recipe_steps(self.recipe, n, packages))
        job = appliance.Job(steps, self.opts.epoch)
        await self._appliance(
            appliance.customise_tree_in_vm, self.rootdir, job, " and ".join(names)
        )

    async def _appliance(self, runner: Any, target: Path, job: Any, what: str) -> Any:
        """runner (customise_in_vm or customise_tree_in_vm) on target, logged;
        returns its ApplianceResult."""
        from kiln_builder import appliance
        from kiln_common.proc import OUTPUT_LOG

        result = await runner(
            target, job, work=self.work / "vm", cache_dir=self.opts.cache_dir,
            layers=self.layers, log_line=lambda line: OUTPUT_LOG.info("%s", line),
            mirrors=appliance.recipe_mirrors(self.recipe, self.opts.default_mirror),
            proxy=self.route.proxy if self.route else None,
        )  # fmt: skip
        self.appliance_accel = result.accel
        accel = result.accel
        log.info("%s ran in the appliance under %s (%s): up in %.1fs, done in %.1fs",
                 what, accel.kind, accel.reason, result.boot_seconds, result.seconds)  # fmt: skip
        return result

    def _vm_edits(self) -> bool:
        """A customised build in vm mode runs packages, files, run and sysprep in
        one appliance boot on the base's own disk, which the host never mounts."""
        return self.customising and self.isolation == "vm"

    async def _customised_in_vm(self, image: Path, found: layout.Layout, grow: bool) -> BakeResult:
        """vm isolation for a customised build: one appliance boot grows the base,
        runs packages, files, run and sysprep on its own disk, and hands back the
        tree (or the files the host needs) as a tar. The host never mounts the
        base: checks, kernels, SBOM and tree outputs read the extracted tree."""
        from kiln_builder import appliance

        names = [name for name, _, _ in self._edit_steps()]
        job = appliance.Job(
            self._vm_steps(names), self.opts.epoch, root="whole" if found.bare else None,
            grow=grow, export=self._export(),
        )  # fmt: skip
        async with self._step("appliance"):
            done = await self._appliance(
                appliance.customise_in_vm, image, job, " and ".join(names) or "the hand-back"
            )
            self.rootdir = self.work / "tree"
            await appliance.extract_export(done, self.rootdir)
        with ImageRoot(self.rootdir) as tree:
            self.distro = _distro_of(tree)
        if self.recipe.checks:
            await self._checks()
        if self._booting():
            with ImageRoot(self.rootdir) as tree:
                copy_kernels(tree, self.work / "kernel")
        return await self._outputs(image)

    async def _add_test_files_in_vm(self, disk: Path, files: dict[str, tuple[str, int]]) -> None:
        from kiln_builder import appliance, vm

        steps: list[Any] = [
            appliance.WriteFile("/" + path, text.encode(), mode)
            for path, (text, mode) in files.items()
        ]
        link, target = vm.WANTS_LINK
        script = f"#!/bin/sh\nset -e\nmkdir -p {link.rsplit('/', 1)[0]}\nln -sfn {target} {link}\n"
        steps.append(appliance.RunScript(script.encode(), "the test runner's unit"))
        job = appliance.Job(tuple(steps), self.opts.epoch)
        # No network: the steps only write files (and the build's proxy is gone).
        await appliance.customise_in_vm(disk, job, work=self.work / "vm",
                                        cache_dir=self.opts.cache_dir, layers=self.layers,
                                        mirrors=())  # fmt: skip

    def _vm_steps(self, names: Sequence[str]) -> tuple[Any, ...]:
        """The appliance's steps: the package names for both distros (which one
        the base is, only the appliance reads), files, run, sysprep."""
        from kiln_builder import appliance

        steps: list[Any] = []
        for name in names:
            if name == "packages":
                debian = map_packages(list(self.recipe.packages), "debian")
                ubuntu = map_packages(list(self.recipe.packages), "ubuntu")
                steps.append(appliance.Packages(tuple(debian), tuple(ubuntu)))
            elif name == "sysprep":
                steps.append(appliance.Sysprep(tuple(self.recipe.sysprep_operations())))
            else:
                steps += appliance.recipe_steps(self.recipe, name)
        return tuple(steps)

    def _export(self) -> tuple[str, ...]:
        """What the host needs back: the whole tree for checks and tree outputs,
        else dpkg's database (the SBOM), os-release and, to boot, /boot."""
        from kiln_builder import appliance

        tree_outputs = any(o.format in TREE_FORMATS for o in self.recipe.outputs)
        if self.recipe.checks or tree_outputs:
            return appliance.WHOLE
        wanted = ("var/lib/dpkg/status", "etc/os-release", "usr/lib/os-release")
        return wanted + (("boot",) if self._booting() else ())

    def _packages(self) -> list[str]:
        """The distro's names for the recipe's packages (xfsprogs added for an xfs
        root made from scratch). A base image says which distro it is only once
        open, so this is called again then."""
        packages = map_packages(list(self.recipe.packages), self.distro)
        if self.recipe.from_.bootstrap is not None and self.recipe.disk.filesystem == "xfs":
            packages = sorted({*packages, "xfsprogs"})
        return packages

    async def _install_packages(self) -> None:
        await customize.install_packages(
            self.rootdir, self._packages(), self.opts.epoch, self.opts.sandbox
        )

    async def _write_files(self) -> None:
        for spec in self.recipe.files:
            data = (
                spec.content.encode()
                if spec.content is not None
                else (self.recipe.base_dir / str(spec.source)).read_bytes()
            )
            customize.write_file(self.rootdir, spec.path, data, int(spec.mode, 8),
                                 spec.owner, spec.group)  # fmt: skip

    async def _run_scripts(self) -> None:
        for step in self.recipe.run:
            script = self.recipe.base_dir / step.script if step.script else None
            await customize.run_script(
                self.rootdir, script, step.inline, self.work, self.opts.epoch, self.opts.sandbox
            )

    async def _sysprep(self) -> None:
        customize.sysprep(self.rootdir, self.recipe.sysprep_operations())

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
            async with self._step(step.name, step.key) as record:
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

    def _booting(self) -> bool:
        return self.opts.boot_test and self.recipe.test.boot is not None

    def _needs_disk(self) -> bool:
        """Only tree outputs (tar, bare filesystems) and no boot test: no disk."""
        return self._booting() or any(o.format not in TREE_FORMATS for o in self.recipe.outputs)

    def plan(self) -> list[str]:
        """The names of the steps this bake will run, in order."""
        if self.customising:
            edits = [name for name, _, _ in self._edit_steps()]
            if self._vm_edits():  # one boot runs them all, and hands the tree back
                edits = ["appliance"]
            names = ["base", *edits]
            names += ["checks"] if self.recipe.checks else []
            names.append("outputs")
        else:
            names = [step.name for step in self._layer_plan()]
            names += ["checks"] if self.recipe.checks else []
            names += ["disk", "outputs"] if self._needs_disk() else ["outputs"]
        if self._booting():
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
        async with self._step("disk"):
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

    async def _outputs(self, image: Path) -> BakeResult:
        """The recipe's output files and the SBOM, from the disk and the tree."""
        async with self._step("outputs"):
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
            await self._checks()
        image = await self._disk() if self._needs_disk() else self.work / "no-disk"
        if not self._needs_disk():
            await self._prepare_tree()
        if self._booting():
            with ImageRoot(self.rootdir) as tree:
                copy_kernels(tree, self.work / "kernel")
        return image, await self._outputs(image)

    def _runs_user_code(self) -> bool:
        """Whether a step would run the recipe's code (packages, run) here."""
        return any(name in ("packages", "run") for name, _, _ in self._edit_steps())

    async def run(self) -> BakeResult:
        log.info("isolation: %s (%s)", self.isolation, self.isolation_reason)
        if self.isolation == "sandbox" and self.opts.sandbox_refused and self._runs_user_code():
            raise FailedPrecondition(
                f"{self.opts.sandbox_refused}; ask for `isolation: vm` in the recipe"
            )
        for part in self._not_yet():
            log.warning("the recipe's %s are not run by this version of the builder", part)
        if self.recipe.test.commands and not self._booting():
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
            if self._booting():
                await self._boot_test(image, result)
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

    async def _checks(self) -> None:
        """Requirement checks on the finished tree, before any disk or output is
        made of it: a from-scratch tree gets its boot configuration first."""
        async with self._step("checks"):
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

    async def _open_base(self, image: Path) -> tuple[layout.Layout, bool]:
        """Fetches, inspects, copies and grows the base into image (raw);
        returns its layout and whether the disk was made bigger."""
        ref = self.recipe.from_.image
        assert ref is not None
        size = self.recipe.disk_size_given()
        async with self._step("base") as record:
            base = await fetch.fetch_base(
                ref,
                self.opts.cache_dir,
                self.work,
                storage=self.opts.storage,
                publisher=self.opts.publisher,
                route=self.route,
            )
            record.cached = base.downloaded == 0
            inspected = await asyncio.to_thread(
                formats.prepare, base.path, self.work, size or formats.MAX_VIRTUAL
            )
            log.info(
                "base image %s: %s (sha256 %s)", base.source, inspected.describe(), base.sha256
            )
            if inspected.bare and self._booting():
                raise FailedPrecondition(
                    f"the base is a {inspected.describe()}: it has no kernel or bootloader"
                    " to boot, so set test: {boot: false}"
                )
            await layout.working_copy(inspected, image)
            # In vm mode the host mounts nothing of the base: the appliance finds
            # its root, and grows it, on the disk the host made bigger.
            found = await layout.find_layout(image, inspected, probe=not self._vm_edits())
            grew = False
            if size is not None:
                grew = await layout.grow(image, found, size, resize=not self._vm_edits())
            self.base = BaseImage(base.source, base.sha256, inspected.describe())
        return found, grew

    async def _customised(self) -> tuple[Path, BakeResult]:
        """The base's own disk, changed in place: its partitions, filesystems and
        bootloader stay as they were."""
        image = self.work / "disk.raw"
        found, grew = await self._open_base(image)
        self._partitioned = not found.bare
        if self._vm_edits():
            return image, await self._customised_in_vm(image, found, grew)
        mnt = self.work / "mnt"
        async with layout.opened(image, found, mnt) as root:
            self.rootdir = root
            with ImageRoot(root) as tree:
                self.distro = _distro_of(tree)
            for name, _, action in self._edit_steps():
                async with self._step(name):
                    await action()
            if self.recipe.checks:
                await self._checks()
            if self._booting():
                with ImageRoot(root) as tree:
                    copy_kernels(tree, self.work / "kernel")
        # Unmounted cleanly (journal closed) before its bytes are converted; read
        # back read-only for the tree outputs and the SBOM.
        async with layout.opened(image, found, mnt, read_only=True) as root:
            self.rootdir = root
            result = await self._outputs(image)
        return image, result

    async def _boot_test(self, image: Path, result: BakeResult) -> None:
        from kiln_builder import vm

        assert self.recipe.test.boot is not None
        console = self.opts.out_dir / f"{self.recipe.name}-{self.recipe.version}.console.log"
        common: dict[str, Any] = dict(
            name=self.opts.build_id,
            console_log=console,
            timeout=self.recipe.test.boot.timeout,
            kernel_dir=self.work / "kernel",  # copied out of the image (copy_kernels)
            cache_dir=self.opts.cache_dir,
            fix_kvm_device=self.opts.fix_kvm_device,
        )
        result.console_log = console
        async with self._step("boot-test"):
            if not self.recipe.test.commands:
                result.boot = await vm.boot_test(image, **common)
                return
            test = self.recipe.test
            # In vm mode the appliance writes the test runner into the throwaway
            # copy: the host mounts nothing a recipe's code wrote.
            add = self._add_test_files_in_vm if self.isolation == "vm" else None
            run = await vm.boot_test_commands(
                image,
                test.commands,
                command_timeout=test.command_timeout,
                add_files=add,
                **common,
            )
            result.boot = run.boot
            self.test_commands[:] = run.results
            tests = self.opts.out_dir / f"{self._stem}.tests.json"
            result.tests = vm.write_results(tests, run.results)
            vm.raise_on_failure(run.results)


def _distro_of(tree: ImageRoot) -> str:
    """debian or ubuntu, from the image's os-release (ID, then ID_LIKE)."""
    for name in ("/etc/os-release", "/usr/lib/os-release"):
        text = tree.read_text(name)
        if text is None:
            continue
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        ids = [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]
        for distro in ("ubuntu", "debian"):
            if distro in (i.strip('"') for i in ids):
                return distro
    log.warning("the base image does not say it is Debian or Ubuntu: package names are Debian's")
    return "debian"


def copy_kernels(tree: ImageRoot, dest: Path) -> None:
    """The image's kernels and initrds, copied out of its /boot for the boot
    test's KVM probe (regular files only, read inside the image)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in tree.glob("/boot", "vmlinuz-*") + tree.glob("/boot", "initrd.img-*"):
        tree.copy_out(path, dest / PurePosixPath(path).name)


def summary(steps: Sequence[StepRecord]) -> str:
    return ", ".join(f"{s.name} {'(cached) ' if s.cached else ''}{s.seconds:.1f}s" for s in steps)
