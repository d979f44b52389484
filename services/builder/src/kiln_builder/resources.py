"""Context managers for every privileged resource a build holds: loop devices,
their partition devices, and mounts. Each is released on every path, in reverse
order when composed with an AsyncExitStack; reclaim() removes what a killed
builder left behind under its workspace root."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from kiln_builder.isolation import cgroups
from kiln_common.proc import ProcessError, process_start, run
from kiln_common.retry import RetryPolicy

log = logging.getLogger(__name__)

RETRIES = 10


@contextlib.asynccontextmanager
async def loop_device(
    image: Path, *, offset: int = 0, size: int | None = None
) -> AsyncIterator[str]:
    """Attaches image (or size bytes of it from offset: one partition) to a free
    loop device; detaches it afterwards."""
    window = [f"--offset={offset}"] if offset else []
    window += [f"--sizelimit={size}"] if size is not None else []
    device = (await run(["losetup", "--find", "--show", *window, image])).stdout.strip()
    try:
        yield device
    finally:
        await detach(device)


# A busy loop device or mount (a process that has not let go yet) is asked again.
BUSY = RetryPolicy(attempts=RETRIES, initial=0.2, maximum=2.0, deadline=None,
                   retry_on=(ProcessError,))  # fmt: skip


async def detach(device: str) -> None:
    await run(["sync"])

    async def once() -> bool:
        try:
            await run(["losetup", "-d", device])
        except ProcessError as exc:
            if "No such device" in exc.output:  # detached already
                return False
            raise
        return True

    if not await BUSY.acall(once, f"detaching {device}"):
        return
    # The kernel detaches lazily; wait until the device is really free.
    backing = Path(f"/sys/block/{Path(device).name}/loop/backing_file")
    for _ in range(50):
        if not backing.exists():
            return
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def partition_devices(
    device: str, count: int, numbers: Sequence[int] = ()
) -> AsyncIterator[list[str]]:
    """The kernel here parses no partition tables by itself: `partx -a` adds
    /dev/loopNpM devices, and `partx -d` removes them again. The partitions are
    1..count, or the given numbers (an MBR's logical ones start at 5)."""
    names = [f"{device}p{n}" for n in (numbers or range(1, count + 1))]
    said = ""
    made: list[str] = []
    try:
        for attempt in range(200):
            if attempt % 20 == 0:  # ask again every second: a first try can race
                said = (await run(["partx", "-a", device], check=False)).stdout.strip()
            made += [n for n in names if not Path(n).exists() and _make_node(n)]
            if all(Path(n).exists() for n in names):
                break
            await asyncio.sleep(0.05)
        else:
            raise FileNotFoundError(
                f"partition devices of {device} did not appear: {names} (partx: {said or 'ok'})"
            )
        yield names
    finally:
        await run(["partx", "-d", device], check=False)
        for name in made:  # a node left behind would name another partition later
            Path(name).unlink(missing_ok=True)


def _make_node(name: str) -> bool:
    """When the kernel knows a partition but no /dev node appeared for it (no
    udev, or a /dev that is not devtmpfs), make the node from sysfs."""
    device = Path(name).name
    parent = device.rsplit("p", 1)[0]
    numbers = Path(f"/sys/block/{parent}/{device}/dev")
    try:
        major, minor = (int(n) for n in numbers.read_text().split(":"))
        os.mknod(name, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    except (OSError, ValueError):
        return False
    log.warning("made the missing device node %s (%d:%d)", name, major, minor)
    return True


def is_mounted(target: Path) -> bool:
    real = os.path.realpath(target)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == real for line in f)


@contextlib.asynccontextmanager
async def mounted(source: str, target: Path, *options: str) -> AsyncIterator[Path]:
    if not target.is_dir():  # a mount point inside an image is made by imageroot
        target.mkdir(parents=True)
    await run(["mount", *options, source, target])
    try:
        yield target
    finally:
        await unmount(target)


async def unmount(target: Path) -> None:
    """Unmounts defensively: only if mounted, after a sync, retrying while busy,
    lazily in the end."""

    async def once() -> None:
        if is_mounted(target):
            await run(["sync"])
            await run(["umount", target])

    try:
        await BUSY.acall(once, f"unmounting {target}")
    except ProcessError as exc:
        log.warning("%s stays busy; detaching it lazily: %s", target, exc)
        await run(["umount", "-l", target])


def _mounts_under(root: Path) -> list[Path]:
    real = os.path.realpath(root)
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    # Deepest first, so nested mounts go before their parents.
    return [Path(p) for p in sorted(points, key=len, reverse=True) if p.startswith(real + "/")]


def _loops_under(root: Path) -> list[str]:
    real = os.path.realpath(root)
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            path = backing.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            continue
        if path.startswith(real + "/"):
            found.append(f"/dev/{backing.parent.parent.name}")
    return sorted(found)


def _users_of(root: Path) -> list[int]:
    """Processes whose working directory, root or an open file is under root."""
    real = os.path.realpath(root)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            links = [proc / "cwd", proc / "root", *(proc / "fd").iterdir()]
        except OSError:
            continue
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == real or target.startswith(real + "/"):
                found.append(int(proc.name))
                break
    return found


async def _kill_users(root: Path) -> list[str]:
    """A builder killed with -9 leaves its children (cp into a mount, mkfs, a
    sandboxed script) running in their own sessions: they hold the mounts and
    loop devices, so they go first."""
    pids = _users_of(root)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    for _ in range(100):
        if not any(process_start(pid) is not None for pid in pids):
            break
        await asyncio.sleep(0.05)
    return [f"process {pid}" for pid in pids]


async def reclaim(root: Path) -> list[str]:
    """The janitor: kills the processes still using root, unmounts everything
    mounted under it and detaches every loop device whose backing file is under
    it (a builder killed mid-build leaves them). Returns what it released."""
    released: list[str] = await _kill_users(root)
    for point in _mounts_under(root):
        await unmount(point)
        released.append(f"mount {point}")
    for device in _loops_under(root):
        await run(["partx", "-d", device], check=False)
        await detach(device)
        released.append(f"loop {device}")
    for item in released:
        log.warning("janitor: released %s", item)
    return released


OWNER_FILE = "kiln-owner"
KEPT_FILE = "kiln-kept"


def claim(workspace: Path) -> None:
    """Marks a workspace as this process's, so a janitor leaves it alone while
    the process lives and reclaims it once it does not."""
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / OWNER_FILE).write_text(f"{os.getpid()} {process_start(os.getpid())}\n")


@contextlib.contextmanager
def claimed_tempdir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A temporary directory claimed by this process: removed on every path
    while the process lives, and by the next builder's janitor
    (cleanup.reclaim_all) if the process is killed first. Never removed while
    something is still mounted under it (a sandbox's idmapped tree whose
    unmount failed): rmtree would walk into the mount and delete what it shows;
    the janitor unmounts first."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    claim(path)
    try:
        yield path
    finally:
        if _mounts_under(path):
            log.error("%s still has mounts under it: left for the janitor", path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _owner_alive(workspace: Path) -> bool:
    try:
        pid, started = (workspace / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        return False
    return str(process_start(int(pid))) == started


async def janitor(work_root: Path, pattern: str = "*", *, claimed_only: bool = False) -> list[str]:
    """Reclaims the workspaces (the directories matching pattern) of builds whose
    process died (kill -9, a lost node): their mounts, loop devices and files.
    Live builds are untouched; with claimed_only, so is a directory that names no
    owner (in a shared directory such as /tmp, it is not known to be a build's)."""
    released: list[str] = cgroups.reclaim_stale()  # a dead builder's sandboxes' groups
    if not work_root.is_dir():
        return released
    for workspace in sorted(p for p in work_root.glob(pattern) if p.is_dir()):
        if _owner_alive(workspace) or (workspace / KEPT_FILE).exists():
            continue
        if claimed_only and not (workspace / OWNER_FILE).exists():
            continue
        released += await reclaim(workspace)
        shutil.rmtree(workspace, ignore_errors=True)
        released.append(f"workspace {workspace}")
        log.warning("janitor: removed the workspace of a dead build: %s", workspace)
    return released


def keep(workspace: Path, why: str) -> None:
    """Marks a failed build's workspace as kept for inspection: the janitor
    leaves it (its mounts and loop devices are released all the same)."""
    (workspace / KEPT_FILE).write_text(why + "\n")
