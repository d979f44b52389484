"""What a builder reclaims when it starts: the workspaces and VM scratch
directories of dead builds (their mounts, loop devices, processes and files)
and orphaned Kiln VMs."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kiln_builder.libvirtd import SYSTEM_URI, answers
from kiln_builder.resources import janitor
from kiln_builder.vm import SCRATCH_PREFIX, reap_orphans


async def reclaim_all(work_root: Path) -> list[str]:
    """libvirtd is not started just for this: with none running there is no
    domain to reap."""
    released = await janitor(work_root)
    # The VMs' scratch directories (overlays, the test commands' throwaway disks,
    # mounted for a moment) live in the temp dir, where QEMU's user can reach them.
    scratch = Path(tempfile.gettempdir())
    released += await janitor(scratch, f"{SCRATCH_PREFIX}*", claimed_only=True)
    if answers(SYSTEM_URI) is None:  # None: libvirtd answers
        released += [f"VM {name}" for name in await reap_orphans(SYSTEM_URI)]
    return released
