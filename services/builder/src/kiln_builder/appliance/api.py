"""What the engine calls: run a job on a raw disk image, or on a directory tree."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from kiln_builder.appliance.image import ensure_appliance, kib, tree_bytes
from kiln_builder.appliance.job import Job
from kiln_builder.appliance.network import host_mirrors, hosts_lines, relays
from kiln_builder.appliance.runner import ApplianceResult, run_job
from kiln_builder.layers import LayerStore
from kiln_builder.resources import loop_device, mounted
from kiln_builder.vm.accel import probe_accel
from kiln_builder.vm.domain import disk_format
from kiln_common.errors import InvalidArgument
from kiln_common.proc import run

log = logging.getLogger(__name__)

JOB_TIMEOUT = 3600.0
# Room a tree's image gets beyond its contents, for what the steps install. The
# file is sparse: unused room costs nothing.
TREE_HEADROOM = 2 * 1024**3


def _log_to(log_line: Callable[[str], None] | None) -> Callable[[str], None]:
    return log_line or (lambda line: log.info("appliance: %s", line))


async def customise_in_vm(
    disk: Path,
    job: Job,
    *,
    work: Path,
    cache_dir: Path,
    layers: LayerStore,
    log_line: Callable[[str], None] | None = None,
    mirrors: Sequence[str] | None = None,
    proxy: str | None = None,
    timeout: float = JOB_TIMEOUT,  # noqa: ASYNC109 (the VM's whole life)
) -> ApplianceResult:
    """Runs job's steps inside a throwaway appliance VM on disk, a RAW image
    (partitioned, or a bare ext3/ext4/xfs filesystem). mirrors: the package
    mirrors the guest may reach (default: the build host's apt sources);
    proxy: the build's egress proxy, which each relay connects through."""
    if disk_format(disk) != "raw":
        raise InvalidArgument(f"{disk.name}: the appliance takes a raw image (convert it first)")
    appliance = await ensure_appliance(cache_dir, layers)
    accel = await probe_accel(appliance.kernel, appliance.initrd, cache_dir / "accel.json")
    found = relays(host_mirrors() if mirrors is None else mirrors, proxy)
    job = dataclasses.replace(job, hosts=hosts_lines(found))
    return await run_job(appliance, disk, job, work=work, accel=accel, relays=found,
                         log_line=_log_to(log_line), timeout=timeout)  # fmt: skip


async def customise_tree_in_vm(
    rootdir: Path,
    job: Job,
    *,
    work: Path,
    cache_dir: Path,
    layers: LayerStore,
    log_line: Callable[[str], None] | None = None,
    mirrors: Sequence[str] | None = None,
    proxy: str | None = None,
    timeout: float = JOB_TIMEOUT,  # noqa: ASYNC109
) -> ApplianceResult:
    """The same for a directory tree (a from-scratch build): the tree becomes a
    bare ext4 image, the job runs on it, and the result is copied back, owners,
    modes, ACLs, xattrs, hard links and device nodes kept."""
    work.mkdir(parents=True, exist_ok=True)
    image = work / "tree.ext4"
    size = await tree_bytes(rootdir) + TREE_HEADROOM
    try:
        await run(["mkfs.ext4", "-q", "-F", "-L", "kiln-tree", "-d", rootdir, image, kib(size)])
        result = await customise_in_vm(
            image, dataclasses.replace(job, root="whole"), work=work, cache_dir=cache_dir,
            layers=layers, log_line=log_line, mirrors=mirrors, proxy=proxy, timeout=timeout,
        )  # fmt: skip
        await copy_back(image, rootdir, work / "tree-mnt")
        return result
    finally:
        image.unlink(missing_ok=True)


async def copy_back(image: Path, rootdir: Path, mountpoint: Path) -> None:
    """rootdir becomes exactly the filesystem in image (mounted read-only)."""
    async with loop_device(image) as device, mounted(device, mountpoint, "-o", "ro") as mnt:
        await run(
            ["rsync", "-aHAX", "--numeric-ids", "--delete", "--exclude=/lost+found",
             f"{mnt}/", f"{rootdir}/"],
            log_output=False,
        )  # fmt: skip
