"""What a builder reclaims when it starts: the workspaces and VM scratch
directories of dead builds (their mounts, loop devices, processes and files)
and orphaned Kiln VMs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kiln_builder import vm
from kiln_builder.isolation import sandbox
from kiln_builder.libvirtd import SYSTEM_URI, answers
from kiln_builder.resources import janitor


async def reclaim_all(work_root: Path) -> list[str]:
    """libvirtd is not started just for this: with none running there is no
    domain to reap."""
    released = await janitor(work_root)
    # The VMs' scratch directories (overlays, the test commands' throwaway disks,
    # mounted for a moment) live in the temp dir, where QEMU's user can reach them;
    # so do the sandboxes' (their resolv.conf).
    scratch = Path(tempfile.gettempdir())
    for prefix in (vm.SCRATCH_PREFIX, sandbox.SCRATCH_PREFIX):
        released += await janitor(scratch, f"{prefix}*", claimed_only=True)
    if answers(SYSTEM_URI) is None:  # None: libvirtd answers
        released += [f"VM {name}" for name in await vm.reap_orphans(SYSTEM_URI)]
    return released
