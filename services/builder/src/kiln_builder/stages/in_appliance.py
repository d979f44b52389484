"""vm isolation's stages: the recipe's steps run in the appliance VM, which
hands the tree back as a tar (docs/isolation.md); the host never mounts what a
recipe's code wrote."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln_builder.imageroot import ImageRoot
from kiln_builder.outputs import TREE_FORMATS
from kiln_builder.pkgmap import map_packages
from kiln_builder.stages import base as base_stage
from kiln_builder.stages.model import Stage, StepRecord
from kiln_builder.stages.packages import packages as stage_packages

if TYPE_CHECKING:
    from kiln_builder.engine import Bake

log = logging.getLogger(__name__)


async def in_vm(bake: Bake, names: Sequence[str]) -> None:
    """Runs steps of a from-scratch build in one appliance boot, on the tree
    (docs/isolation.md)."""
    from kiln_builder.isolation import appliance

    packages = stage_packages(bake)
    steps = tuple(s for n in names for s in appliance.recipe_steps(bake.recipe, n, packages))
    job = appliance.Job(steps, bake.opts.epoch)
    await run_appliance(
        bake, appliance.customise_tree_in_vm, bake.rootdir, job, " and ".join(names)
    )


class _Appliance(Stage):
    """One appliance boot that runs the edit steps `names`."""

    name = "appliance"

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.reads = self.names


class TreeAppliance(_Appliance):
    """A from-scratch build's packages, files and run in vm isolation: one
    appliance boot (a hand-back of the whole tree each would cost about half a
    minute under TCG), cached as the last one's layer, under the same key."""

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        await in_vm(bake, self.names)


class CustomisedAppliance(_Appliance):
    """vm isolation for a customised build: one appliance boot grows the base,
    runs packages, files, run and sysprep on its own disk, and hands back the
    tree (or the files the host needs) as a tar. The host never mounts the
    base: checks, kernels, SBOM and tree outputs read the extracted tree."""

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        from kiln_builder.isolation import appliance

        opened = bake.opened
        assert opened is not None
        job = appliance.Job(
            vm_steps(bake, self.names), bake.opts.epoch,
            root="whole" if opened.found.bare else None, grow=opened.grew, export=export(bake),
        )  # fmt: skip
        what = " and ".join(self.names) or "the hand-back"
        done = await run_appliance(bake, appliance.customise_in_vm, bake.image, job, what)
        bake.rootdir = bake.work / "tree"
        await appliance.extract_export(done, bake.rootdir)
        with ImageRoot(bake.rootdir) as tree:
            bake.distro = base_stage.distro_of(tree)


async def run_appliance(bake: Bake, runner: Any, target: Path, job: Any, what: str) -> Any:
    """runner (customise_in_vm or customise_tree_in_vm) on target, logged;
    returns its ApplianceResult."""
    from kiln_builder.isolation import appliance
    from kiln_common.proc import OUTPUT_LOG

    result = await runner(
        target, job, work=bake.work / "vm", cache_dir=bake.opts.cache_dir,
        layers=bake.layers, log_line=lambda line: OUTPUT_LOG.info("%s", line),
        mirrors=appliance.recipe_mirrors(bake.recipe, bake.opts.default_mirror),
        proxy=bake.route.proxy if bake.route else None,
    )  # fmt: skip
    bake.appliance_accel = result.accel
    accel = result.accel
    log.info("%s ran in the appliance under %s (%s): up in %.1fs, done in %.1fs",
             what, accel.kind, accel.reason, result.boot_seconds, result.seconds)  # fmt: skip
    return result


async def add_test_files_in_vm(bake: Bake, disk: Path, files: dict[str, tuple[str, int]]) -> None:
    from kiln_builder import vm
    from kiln_builder.isolation import appliance

    steps: list[Any] = [
        appliance.WriteFile("/" + path, text.encode(), mode) for path, (text, mode) in files.items()
    ]
    link, target = vm.WANTS_LINK
    script = f"#!/bin/sh\nset -e\nmkdir -p {link.rsplit('/', 1)[0]}\nln -sfn {target} {link}\n"
    steps.append(appliance.RunScript(script.encode(), "the test runner's unit"))
    job = appliance.Job(tuple(steps), bake.opts.epoch)
    # No network: the steps only write files (and the build's proxy is gone).
    await appliance.customise_in_vm(disk, job, work=bake.work / "vm",
                                    cache_dir=bake.opts.cache_dir, layers=bake.layers,
                                    mirrors=())  # fmt: skip


def vm_steps(bake: Bake, names: Sequence[str]) -> tuple[Any, ...]:
    """The appliance's steps: the package names for both distros (which one
    the base is, only the appliance reads), files, run, sysprep."""
    from kiln_builder.isolation import appliance

    steps: list[Any] = []
    for name in names:
        if name == "packages":
            debian = map_packages(list(bake.recipe.packages), "debian")
            ubuntu = map_packages(list(bake.recipe.packages), "ubuntu")
            steps.append(appliance.Packages(tuple(debian), tuple(ubuntu)))
        elif name == "sysprep":
            steps.append(appliance.Sysprep(tuple(bake.recipe.sysprep_operations())))
        else:
            steps += appliance.recipe_steps(bake.recipe, name)
    return tuple(steps)


def export(bake: Bake) -> tuple[str, ...]:
    """What the host needs back: the whole tree for checks and tree outputs,
    else dpkg's database (the SBOM), os-release and, to boot, /boot."""
    from kiln_builder.isolation import appliance

    tree_outputs = any(o.format in TREE_FORMATS for o in bake.recipe.outputs)
    if bake.recipe.checks or tree_outputs:
        return appliance.WHOLE
    wanted = ("var/lib/dpkg/status", "etc/os-release", "usr/lib/os-release")
    return wanted + (("boot",) if bake.booting() else ())
