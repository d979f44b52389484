"""Memory and process limits for a sandbox, as a control group made for it
under the builder's own and removed afterwards (killing whatever is left in
it first, so nothing a script started outlives its step).

Both layouts are handled: the unified cgroup v2 tree, and the v1 hierarchies
(one directory under `memory` and one under `pids`) that hosts without a
systemd-managed unified tree still mount. Rlimits are no substitute, which is
why there is no rlimit fallback: RLIMIT_NPROC counts every process of uid 0
on the host (the builder's own included), and RLIMIT_AS breaks programs that
reserve address space they never use. Where no cgroup can be made, the limits
are logged as not enforced; the time limit still applies."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from kiln_common.proc import process_start

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "kiln-sandbox-"
_serial = itertools.count()


@dataclass(frozen=True)
class Cgroup:
    """One sandbox's group: a directory per hierarchy it is limited in."""

    dirs: tuple[Path, ...]

    def add(self, pid: int) -> None:
        for directory in self.dirs:
            (directory / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
        return found

    def peak_memory(self) -> int | None:
        for directory in self.dirs:
            for name in ("memory.peak", "memory.max_usage_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    return int((directory / name).read_text())
        return None

    def destroy(self, timeout: float = 10.0) -> None:
        """Kills every process still in the group, then removes it."""
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        for directory in self.dirs:
            for _ in range(50):  # the kernel frees a group a moment after its last exit
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            else:
                log.warning("control group %s could not be removed", directory)


def _own_paths() -> dict[str, str]:
    """This process's group in each hierarchy ("" is the unified one)."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _v2_parent(paths: dict[str, str]) -> Path | None:
    if not (CGROUP_ROOT / "cgroup.controllers").is_file() or "" not in paths:
        return None
    parent = CGROUP_ROOT / paths[""].lstrip("/")
    wanted = {"memory", "pids"}
    enabled = set((parent / "cgroup.subtree_control").read_text().split())
    if not wanted <= enabled:
        # Fails (EBUSY) where the parent itself holds processes, as a container's
        # root group usually does; then there are no limits to be had here.
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
    return parent


def _parents() -> list[Path]:
    """Where this process makes its groups, in each hierarchy it uses."""
    paths = _own_paths()
    if (CGROUP_ROOT / "cgroup.controllers").is_file():
        return [CGROUP_ROOT / paths.get("", "/").lstrip("/")]
    return [CGROUP_ROOT / c / paths[c].lstrip("/") for c in ("memory", "pids") if c in paths]


def reclaim_stale() -> list[str]:
    """Removes the groups of builders that died (SIGKILL skips destroy());
    their processes died with them (bwrap --die-with-parent), but an empty
    group stays until removed. Returns what it removed."""
    removed = []
    for parent in _parents():
        for group in parent.glob(f"{PREFIX}*"):
            try:
                pid, started, _ = group.name.removeprefix(PREFIX).split("-")
            except ValueError:
                continue
            if str(process_start(int(pid))) != started:
                Cgroup((group,)).destroy()
                removed.append(f"cgroup {group}")
    return removed


def _make(name: str, memory_bytes: int | None, max_pids: int | None) -> Cgroup:
    paths = _own_paths()
    parent = _v2_parent(paths)
    if parent is not None:
        group = parent / name
        group.mkdir()
        made = Cgroup((group,))
        try:
            if memory_bytes:
                (group / "memory.max").write_text(str(memory_bytes))
                if (group / "memory.swap.max").exists():  # absent without swap accounting
                    (group / "memory.swap.max").write_text("0")
            if max_pids:
                (group / "pids.max").write_text(str(max_pids))
        except OSError:
            made.destroy()  # not left behind, one per command
            raise
        return made
    dirs = []
    try:
        for controller, limit, file in (
            ("memory", memory_bytes, "memory.limit_in_bytes"),
            ("pids", max_pids, "pids.max"),
        ):
            group = CGROUP_ROOT / controller / paths[controller].lstrip("/") / name
            group.mkdir()
            dirs.append(group)
            if limit:
                (group / file).write_text(str(limit))
    except BaseException:
        Cgroup(tuple(dirs)).destroy()
        raise
    return Cgroup(tuple(dirs))


@contextlib.asynccontextmanager
async def limited(memory_bytes: int | None, max_pids: int | None) -> AsyncIterator[Cgroup | None]:
    """A fresh group with these limits (None: this host gives no writable
    cgroups, and the limits are not enforced), destroyed on every path."""
    group: Cgroup | None = None
    if memory_bytes or max_pids:
        # Owner pid and start time: a janitor removes the groups of dead owners.
        name = f"{PREFIX}{os.getpid()}-{process_start(os.getpid())}-{next(_serial)}"
        try:
            group = _make(name, memory_bytes, max_pids)
        except (OSError, KeyError) as exc:
            log.warning("sandbox memory and process limits not enforced (no cgroup): %s", exc)
    try:
        yield group
    finally:
        if group is not None:
            # Off the event loop: it may wait for the last processes to go.
            await asyncio.shield(asyncio.to_thread(group.destroy))
