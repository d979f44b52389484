"""Runs commands inside an image's root filesystem, never against the build
host's root: bubblewrap gives the command the image as / with private /dev,
/proc, /tmp and /run, in its own mount, PID, IPC, UTS and network namespaces.
The mounts live and die with the sandbox, so a killed build leaves none behind.

What the command may do (docs/security.md): it runs as root in the image with
only the capabilities that dpkg, maintainer scripts and recipe scripts need
to act on the image's own files (CAPABILITIES below) and no_new_privs, so no
setuid program or file capability gives any back; its network leaves through
slirp4netns behind a firewall that keeps it off the builder's loopback and the
node's addresses (isolation.network); it runs in a control group of its own with
memory and process limits (cgroups), and is killed, with everything it
started, when its time limit passes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln_builder.imageroot import ImageRoot
from kiln_builder.isolation import cgroups
from kiln_builder.isolation import network as sandbox_net  # `network` is a parameter here
from kiln_builder.isolation.seccomp import program_fd
from kiln_builder.isolation.userns import DEFAULT_IDS, IdRange, idmapped, user_namespace
from kiln_builder.resources import claimed_tempdir
from kiln_common.proc import ProcessError, ProcessTimeout, Result, process_start, run
from kiln_common.retry import RetryPolicy

# Kept, each for a reason; every other capability is dropped (CAP_SYS_ADMIN:
# mounts and most of the kernel; CAP_MKNOD: device nodes that reach host disks;
# CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_BOOT, CAP_SYS_TIME, CAP_SYSLOG,
# CAP_BPF, CAP_PERFMON, CAP_MAC_*: the kernel's, not the image's; CAP_SYS_PTRACE:
# other processes; CAP_NET_ADMIN: the firewall; CAP_NET_RAW: forged packets;
# CAP_DAC_READ_SEARCH: open_by_handle_at reaches any file of the host
# filesystem the image lives on; CAP_SETPCAP: no capability set to shape).
CAPABILITIES = (
    "CAP_CHOWN",  # dpkg gives unpacked files their owners; chown in scripts
    "CAP_DAC_OVERRIDE",  # root edits files whatever their mode (/etc/shadow is 0640)
    "CAP_FOWNER",  # chmod, utime and xattrs on files root does not own
    "CAP_FSETID",  # setuid/setgid bits survive dpkg's chown (su, passwd)
    "CAP_SETUID",  # apt drops to _apt; su, runuser, start-stop-daemon --chuid
    "CAP_SETGID",  # the same for groups; useradd's files
    "CAP_SETFCAP",  # setcap in maintainer scripts (iputils-ping's cap_net_raw)
    "CAP_KILL",  # a script stops a daemon it started under another uid
    "CAP_SYS_CHROOT",  # maintainer scripts that chroot; inside the image only
    "CAP_AUDIT_WRITE",  # login, su and sshd write an audit record or fail
    "CAP_NET_BIND_SERVICE",  # a test server on a low port in the sandbox's own netns
)

SCRATCH_PREFIX = "kiln-sandbox-"  # in the temp dir; cleanup.reclaim_all sweeps a dead build's
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
POLICY_RC = "#!/bin/sh\n# Kiln: no service starts while the image is being built.\nexit 101\n"


@dataclass(frozen=True)
class SandboxPolicy:
    """Limits on each command run in the sandbox (BuilderSettings.sandbox_*)."""

    memory_bytes: int | None = 4 * 1024**3
    """Memory of the command and all it starts (a cgroup limit); None: none."""
    max_pids: int | None = 4096
    """Processes and threads at once (the cgroup's pids.max); None: none."""
    timeout: float | None = 3600.0
    """Seconds before the command and everything it started are killed."""
    blocked_networks: tuple[str, ...] = ()
    """Networks the sandbox may not reach besides the node's own addresses
    (a cluster's pod and service ranges, a private network's)."""
    user_namespace: bool = True
    """Run the command as root of a user namespace mapped to ids (an unprivileged
    host uid range), on an idmapped mount of the tree; false: as host root with
    dropped capabilities (for a kernel or filesystem without idmapped mounts)."""
    ids: IdRange = DEFAULT_IDS
    """The host uids and gids the namespace's 0..65535 map to."""


DEFAULT_POLICY = SandboxPolicy()


def sandbox_argv(
    root: Path,
    argv: Sequence[str],
    *,
    ro_binds: Sequence[tuple[Path, str]] = (),
    info_fd: int | None = None,
    block_fd: int | None = None,
    seccomp_fd: int | None = None,
    userns_pid: int | None = None,
) -> list[str]:
    """bwrap's command line. info_fd receives the sandbox's first pid; the
    command waits for a byte on block_fd (its network is set up meanwhile);
    seccomp_fd holds the filter's BPF; userns_pid holds the user namespace
    bwrap runs in, as its root (nsenter), on root (an idmapped mount)."""
    enter = (
        ["nsenter", f"--user=/proc/{userns_pid}/ns/user", "--setuid=0", "--setgid=0", "--"]
        if userns_pid is not None
        else []
    )
    args = [
        *enter,
        "bwrap",
        "--bind", str(root), "/",
        "--dev", "/dev",
        "--proc", "/proc",
        # Kernel-wide knobs (vm.drop_caches, kernel.core_pattern: a pipe there
        # runs a program on the host) are root-writable with no capability;
        # bwrap does not always cover them. /proc/sys/net still shows the
        # sandbox's own namespace: it follows the reader, not the mount.
        "--ro-bind", "/proc/sys", "/proc/sys",
        "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger",
        "--perms", "1777", "--tmpfs", "/tmp",
        "--tmpfs", "/run",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
        "--hostname", "kiln-build",
        "--die-with-parent",
        "--new-session",
        "--cap-drop", "ALL",
    ]  # fmt: skip
    for cap in CAPABILITIES:
        args += ["--cap-add", cap]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    if block_fd is not None:
        args += ["--block-fd", str(block_fd)]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    for source, target in ro_binds:
        args += ["--ro-bind", str(source), target]
    return [*args, "--", *argv]


class _Launch:
    """The pipes between the builder and one bwrap: bwrap writes its first
    pid on info and holds the command until a byte arrives on block."""

    def __init__(self) -> None:
        self.info_r, self.info_w = os.pipe()
        self.block_r, self.block_w = os.pipe()
        self._open = {self.info_r, self.info_w, self.block_r, self.block_w}
        self.stillborn = False  # bwrap's set-up failed: the command never ran

    def close(self, *fds: int) -> None:
        for fd in fds:
            if fd in self._open:
                self._open.discard(fd)
                os.close(fd)

    def close_all(self) -> None:
        self.close(*list(self._open))

    async def first_pid(self) -> int | None:
        """The sandbox's first process (None: bwrap stopped before making it;
        its own output then says why). bwrap's copies of the ends it uses are
        its own: ours are closed, so its exit is an end of file here."""
        self.close(self.info_w, self.block_r)

        def whole(data: bytes) -> bool:
            try:
                return "child-pid" in json.loads(data)
            except ValueError:
                return False

        try:
            async with asyncio.timeout(sandbox_net.READY_SECONDS):
                data = await sandbox_net.read_fd(self.info_r, whole)
        except TimeoutError:
            return None
        return int(json.loads(data)["child-pid"]) if whole(data) else None

    def release(self) -> None:
        os.write(self.block_w, b"1")
        self.close(self.block_w)


# bwrap sets up the sandbox's mounts while its network is made, and can fail
# there for a reason of the moment: its recursive binds race with mounts
# coming and going elsewhere on the host (containers/bubblewrap#650). The
# command has not started then, so the launch is tried again, a moment later.
LAUNCH_ATTEMPTS = 3


class SandboxNotStarted(ProcessError):
    """bwrap stopped before the command started: its output says why (the
    whole bwrap command line is in the log)."""

    def __str__(self) -> str:
        return "the sandbox could not be set up: " + (self.output.strip() or "bwrap said nothing")


_LAUNCH = RetryPolicy(
    attempts=LAUNCH_ATTEMPTS, initial=0.2, maximum=1.0, deadline=None, retry_on=(SandboxNotStarted,)
)


async def run_in(
    root: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    network: bool = True,
    ro_binds: Sequence[tuple[Path, str]] = (),
    policy: SandboxPolicy = DEFAULT_POLICY,
) -> Result:
    """Runs argv in the sandbox on root under policy; raises ProcessError
    (ProcessTimeout past the time limit) if it fails, SandboxNotStarted if
    bwrap could not set the sandbox up, LAUNCH_ATTEMPTS times."""
    return await _LAUNCH.acall(
        lambda: _run_once(root, argv, env, network, ro_binds, policy), "the sandbox's launch"
    )


async def _run_once(
    root: Path,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    network: bool,
    ro_binds: Sequence[tuple[Path, str]],
    policy: SandboxPolicy,
) -> Result:
    """One launch. The network, the control group and the pipes are released
    on every path, in that order."""
    launch = _Launch()
    try:
        async with contextlib.AsyncExitStack() as stack:
            scratch = stack.enter_context(claimed_tempdir(SCRATCH_PREFIX))
            if policy.user_namespace:
                # The namespace's root (no host root) reaches the tree's mount and
                # the files bound in through it; no other user of the host does.
                os.chown(scratch, policy.ids.base, policy.ids.base)
            group = await stack.enter_async_context(
                cgroups.limited(policy.memory_bytes, policy.max_pids)
            )
            userns_pid = None
            if policy.user_namespace:
                userns_pid = await stack.enter_async_context(user_namespace(policy.ids))
                root = stack.enter_context(idmapped(root, userns_pid, scratch / "root"))
            seccomp_fd = program_fd()
            stack.callback(os.close, seccomp_fd)

            async def started(bwrap_pid: int) -> None:
                pid = await launch.first_pid()
                if pid is None:
                    return
                try:
                    if group is not None:  # before the command forks anything
                        group.add(bwrap_pid)
                        group.add(pid)
                    if network:
                        await stack.enter_async_context(
                            sandbox_net.user_network(pid, policy.blocked_networks)
                        )
                except Exception:
                    if process_start(pid) is not None:
                        raise
                # The command waits for the release, so a first process gone by
                # now died in bwrap's set-up: bwrap exits saying why.
                if process_start(pid) is None:
                    launch.stillborn = True
                    return
                launch.release()

            binds = [*_readable_copies(ro_binds, scratch),
                     (sandbox_net.resolv_conf(scratch), "/run/kiln-resolv.conf")]  # fmt: skip
            try:
                done = await run(
                    sandbox_argv(root, argv, ro_binds=binds, info_fd=launch.info_w,
                                 block_fd=launch.block_r, seccomp_fd=seccomp_fd,
                                 userns_pid=userns_pid),
                    env={**BASE_ENV, **(env or {})},
                    time_limit=policy.timeout,
                    pass_fds=(launch.info_w, launch.block_r, seccomp_fd),
                    started=started,
                )  # fmt: skip
            except ProcessError as exc:
                if launch.stillborn and not isinstance(exc, ProcessTimeout):
                    raise SandboxNotStarted(exc.argv, exc.returncode, exc.output) from exc
                raise
            if launch.stillborn:  # bwrap exits 1 then; never a success unrun
                raise SandboxNotStarted(done.argv, done.returncode, done.stdout)
            return done
    finally:
        launch.close_all()


def _readable_copies(binds: Sequence[tuple[Path, str]], scratch: Path) -> list[tuple[Path, str]]:
    """Copies of the files to bind in, in the scratch directory, readable by
    anyone: the namespace's root is no host root, and the originals may sit
    in a directory it cannot enter (a recipe under /root). A missing one is
    left as it is, for bwrap to name in its failure."""
    copies = []
    for number, (source, target) in enumerate(binds):
        if not source.is_file():
            copies.append((source, target))
            continue
        copy = scratch / f"bind-{number}"
        copy.write_bytes(source.read_bytes())
        copy.chmod(0o644)
        copies.append((copy, target))
    return copies


@contextlib.contextmanager
def services_held(root: Path) -> Iterator[None]:
    """policy-rc.d forbids starting services while packages install, and a
    resolv.conf pointing at the sandbox's resolver lets apt resolve names;
    both are removed afterwards (sysprep removes any resolv.conf the build left).
    Both edits resolve their paths inside the image (imageroot)."""
    with ImageRoot(root) as tree:
        held = _hold(tree)
    try:
        yield
    finally:
        with ImageRoot(root) as tree:
            _release(tree, held)


@dataclass(frozen=True)
class _Held:
    """resolv.conf as it was: a file's bytes and stat, or a link's target."""

    data: bytes | None
    found: os.stat_result | None
    link: str | None


def _hold(tree: ImageRoot) -> _Held:
    # A link planted at either path is replaced, not followed.
    tree.write("/usr/sbin/policy-rc.d", POLICY_RC.encode(), 0o755)
    link = tree.readlink("/etc/resolv.conf")
    data = None if link is not None else tree.read_bytes("/etc/resolv.conf")
    found = tree.lstat("/etc/resolv.conf") if data is not None else None
    tree.symlink("/etc/resolv.conf", "/run/kiln-resolv.conf")
    return _Held(data, found, link)


def _release(tree: ImageRoot, held: _Held) -> None:
    tree.unlink("/usr/sbin/policy-rc.d")
    tree.unlink("/etc/resolv.conf")
    if held.link is not None:
        tree.symlink("/etc/resolv.conf", held.link)
    elif held.data is not None and held.found is not None:
        mode, uid, gid = held.found.st_mode & 0o7777, held.found.st_uid, held.found.st_gid
        tree.write("/etc/resolv.conf", held.data, mode, uid, gid)
