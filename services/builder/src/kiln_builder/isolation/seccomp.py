"""The sandbox's seccomp filter: what image builds never need is refused with
EPERM (or ENOSYS), everything else is allowed. bubblewrap loads it (--seccomp)
just before the command starts, after no_new_privs.

Refused, each for a reason (docs/security.md has the table):
- kernel keyrings (keyctl, add_key, request_key): shared kernel state, a
  history of use-after-free bugs, and nothing dpkg or apt uses;
- bpf, perf_event_open, userfaultfd, io_uring: the kernel's largest attack
  surface for unprivileged code;
- new user namespaces (unshare or clone with CLONE_NEWUSER): capabilities
  again, over new namespaces; clone3 answers ENOSYS, so that libc falls back to
  clone, whose flags can be checked;
- module loading, kexec, reboot, swap, accounting, quotas, the clock, the
  kernel log, open_by_handle_at: the kernel's and the host's, not the image's;
- mount and the new mount API, pivot_root, setns: the sandbox's mounts are
  bubblewrap's, made before the filter.
The capabilities the sandbox drops already forbid most of these; the filter is
the second wall, and the only one for keyrings, userfaultfd and new user
namespaces, which an unprivileged process may otherwise use.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import tempfile

import pyseccomp as seccomp

CLONE_NEWUSER = 0x10000000

REFUSED = (
    "keyctl", "add_key", "request_key",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "open_by_handle_at", "lookup_dcookie", "iopl", "ioperm",
    "mount", "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
)  # fmt: skip


def _rules(flt: seccomp.SyscallFilter) -> None:
    eperm = seccomp.ERRNO(errno.EPERM)
    for name in REFUSED:
        try:
            flt.add_rule(eperm, name)
        except (RuntimeError, ValueError, OSError):  # unknown to this libseccomp: none to refuse
            continue
    new_user = seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
    flt.add_rule(eperm, "unshare", new_user)
    flt.add_rule(eperm, "clone", new_user)  # x86's clone takes the flags first
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")


@functools.cache
def program() -> bytes:
    """The filter as BPF bytes, for bwrap's --seccomp fd (built once)."""
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    if platform.machine() == "x86_64":
        # i386 binaries in an image go through the same filter (else they die).
        for arch in (seccomp.Arch.X86, seccomp.Arch.X32):
            try:
                flt.add_arch(arch)
            except (RuntimeError, ValueError, OSError):
                continue
    _rules(flt)
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def program_fd() -> int:
    """A readable fd holding the program, for bwrap (the caller closes it)."""
    read_end, write_end = os.pipe()
    data = program()
    try:
        if len(data) > 65536:  # a pipe's buffer: the filter is a few KiB
            raise ValueError("the seccomp filter is too large for a pipe")
        os.write(write_end, data)
    finally:
        os.close(write_end)
    return read_end
