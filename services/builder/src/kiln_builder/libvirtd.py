"""A libvirt daemon the VM runner can talk to.

In production the builder's container starts libvirtd; on a development machine
without systemd nobody does. ensure_libvirtd() opens the system URI and, only if
that fails, starts virtlogd (which libvirt's QEMU driver needs for console and
domain logs) and libvirtd by hand, then waits until the URI answers. Without udev
it also gives /dev/kvm the group and mode udev would (see kvm_device_as_udev_would).
"""

from __future__ import annotations

import grp
import logging
import os
import stat
import time
from pathlib import Path

import libvirt

from kiln_common.errors import Unavailable
from kiln_common.proc import ProcessError, pid_alive, run_sync

log = logging.getLogger(__name__)

SYSTEM_URI = "qemu:///system"
DEFAULT_RUN_DIR = Path("/run/kiln/libvirt")
START_TIMEOUT = 30.0

KVM_DEVICE = Path("/dev/kvm")

# (daemon, pid file it writes when started as root with -d)
_DAEMONS = (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid")))


def quiet_libvirt() -> None:
    """libvirt's default handler prints every error to stderr, including the ones
    Kiln expects and handles (no daemon yet, a domain already gone); the
    exceptions carry the same text."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


quiet_libvirt()


def answers(uri: str) -> str | None:
    """None if uri opens, else libvirt's reason."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return str(exc)
    conn.close()
    return None


def _running(pid_file: Path) -> bool:
    try:
        return pid_alive(int(pid_file.read_text().strip()))
    except (OSError, ValueError):
        return False


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log written)"


def _start(daemon: str, log_file: Path) -> None:
    # -d forks into the background once the daemon has initialised, so the command
    # returns quickly and its exit status says whether start-up worked. Warnings and
    # errors go to log_file (the daemons read LIBVIRT_LOG_OUTPUTS after their config).
    try:
        run_sync(
            [daemon, "-d"],
            env={"LIBVIRT_LOG_OUTPUTS": f"3:file:{log_file}"},
            timeout=START_TIMEOUT,
        )
    except ProcessError as exc:
        raise Unavailable(
            f"could not start {daemon}: {exc}\nend of {log_file}:\n{_log_tail(log_file)}"
        ) from exc


def ensure_libvirtd(
    run_dir: Path | None = None,
    *,
    uri: str = SYSTEM_URI,
    timeout: float = START_TIMEOUT,
    fix_kvm_device: bool = True,
) -> str:
    """Returns a libvirt URI that answers, starting the daemons if need be.

    run_dir holds the daemons' logs when Kiln starts them (default /run/kiln/libvirt).
    Raises Unavailable, naming the log, if libvirtd does not answer within timeout.
    """
    if fix_kvm_device:
        kvm_device_as_udev_would()
    if answers(uri) is None:
        return uri
    run_dir = run_dir or DEFAULT_RUN_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    for daemon, pid_file in _DAEMONS:
        if not _running(pid_file):
            log.info("%s is not running: starting it (log in %s)", daemon, run_dir)
            _start(daemon, run_dir / f"{daemon}.log")
    return _wait(uri, run_dir / "libvirtd.log", timeout)


def kvm_device_as_udev_would() -> None:
    """Gives /dev/kvm the group kvm and mode 0660, as udev does on a normal host.

    Without udev the device stays root-only (0600). libvirt's QEMU probe then reports
    KVM, but its own check of /dev/kvm as the QEMU user (in group kvm) fails, so it
    declares its capability cache stale on every lookup and re-probes QEMU a dozen
    times per domain start: about 50 s before each guest starts, instead of 0.4 s.
    Whether a guest then runs on KVM or TCG is vm.probe_accel's decision, not this.
    Not for a container that sees the node's /dev (fix_kvm_device=False): its
    kvm group id need not be the node's, and the device is the node's.
    """
    try:
        info = KVM_DEVICE.stat()
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (FileNotFoundError, KeyError):
        return  # no KVM, or no kvm group (libvirt's packages create it): nothing to fix
    if info.st_gid == kvm_gid and stat.S_IMODE(info.st_mode) & 0o060 == 0o060:
        return
    log.info("giving %s group kvm and mode 0660, as udev would", KVM_DEVICE)
    try:
        os.chown(KVM_DEVICE, -1, kvm_gid)
        os.chmod(KVM_DEVICE, stat.S_IMODE(info.st_mode) | 0o660)
    except PermissionError:
        log.warning("cannot fix %s (not root): libvirt will start domains slowly", KVM_DEVICE)


def _wait(uri: str, log_file: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (reason := answers(uri)) is not None:
        if time.monotonic() > deadline:
            raise Unavailable(
                f"libvirtd did not answer on {uri} within {timeout:.0f}s ({reason});"
                f" end of {log_file}:\n{_log_tail(log_file)}"
            )
        time.sleep(0.2)
    log.info("libvirtd answers on %s", uri)
    return uri
