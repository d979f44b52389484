"""What the engine calls: run a job on a raw disk image, or on a directory tree."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from kiln_builder.isolation.appliance.image import ensure_appliance, kib, tree_bytes
from kiln_builder.isolation.appliance.job import WHOLE, Job
from kiln_builder.isolation.appliance.network import host_mirrors, hosts_lines, relays
from kiln_builder.isolation.appliance.runner import ApplianceResult, run_job
from kiln_builder.layers import LayerStore
from kiln_builder.untar import Extracted, extract
from kiln_builder.vm.accel import probe_accel
from kiln_builder.vm.domain import disk_format
from kiln_common.errors import InvalidArgument
from kiln_common.proc import run

log = logging.getLogger(__name__)

JOB_TIMEOUT = 3600.0
EXPORT_ROOM = 1024**3  # beyond the disk's size: tar's headers (sparse, costs nothing)
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
    out = _export_disk(work, disk) if job.export else None
    return await run_job(appliance, disk, job, work=work, accel=accel, relays=found,
                         log_line=_log_to(log_line), timeout=timeout, out=out)  # fmt: skip


def _export_disk(work: Path, disk: Path) -> Path:
    """A sparse file for the tar the job hands back: the tree fits in its disk."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "export.tar"
    out.unlink(missing_ok=True)
    with open(out, "wb") as handle:
        handle.truncate(disk.stat().st_size + EXPORT_ROOM)
    return out


async def extract_export(result: ApplianceResult, dest: Path) -> None:
    """The tree the appliance handed back, extracted into dest (made empty)
    through imageroot (untar); the tar's disk is removed afterwards."""
    assert result.export is not None, "the job asked for no export"
    await asyncio.to_thread(shutil.rmtree, dest, ignore_errors=True)
    dest.mkdir(parents=True)
    try:
        done = await asyncio.to_thread(_extract_file, result.export, dest)
        log.info("the appliance handed back %d entries", done.members)
    finally:
        result.export.unlink(missing_ok=True)


def _extract_file(tar: Path, dest: Path) -> Extracted:
    """Extracts at most as many bytes as the disk the tar came on could hold."""
    with open(tar, "rb") as stream:
        return extract(stream, dest, max_bytes=tar.stat().st_size)


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
    bare ext4 image, the job runs on it, and the appliance hands the result back
    as a tar, extracted in place of the tree (owners, modes, xattrs, hard links
    and device nodes kept; see untar)."""
    work.mkdir(parents=True, exist_ok=True)
    image = work / "tree.ext4"
    size = await tree_bytes(rootdir) + TREE_HEADROOM
    try:
        await run(["mkfs.ext4", "-q", "-F", "-L", "kiln-tree", "-d", rootdir, image, kib(size)])
        result = await customise_in_vm(
            image, dataclasses.replace(job, root="whole", export=WHOLE), work=work,
            cache_dir=cache_dir, layers=layers, log_line=log_line, mirrors=mirrors, proxy=proxy,
            timeout=timeout,
        )  # fmt: skip
        # The image is never mounted here: its tree comes back as a tar.
        fresh = rootdir.with_name(rootdir.name + ".new")
        await extract_export(result, fresh)
        await asyncio.to_thread(shutil.rmtree, rootdir)
        fresh.rename(rootdir)
        return result
    finally:
        image.unlink(missing_ok=True)
