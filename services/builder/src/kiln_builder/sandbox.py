"""Runs commands inside an image's root filesystem, never against the build
host's root: bubblewrap gives the command the image as / with private /dev,
/proc, /tmp and /run, in its own mount, PID, IPC and UTS namespaces. The
mounts live and die with the sandbox, so a killed build leaves none behind."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from kiln_common.proc import Result, run

BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "DEBIAN_FRONTEND": "noninteractive",
    "HOME": "/root",
}
POLICY_RC = "#!/bin/sh\n# Kiln: no service starts while the image is being built.\nexit 101\n"


def sandbox_argv(
    root: Path,
    argv: Sequence[str],
    *,
    network: bool = True,
    ro_binds: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    args = [
        "bwrap",
        "--bind", str(root), "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--perms", "1777", "--tmpfs", "/tmp",
        "--tmpfs", "/run",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--hostname", "kiln-build",
        "--die-with-parent",
        "--new-session",
    ]  # fmt: skip
    if network:
        # The image's own resolv.conf is left as it is; DNS comes from the host.
        args += ["--ro-bind", "/etc/resolv.conf", "/run/kiln-resolv.conf"]
    else:
        args.append("--unshare-net")
    for source, target in ro_binds:
        args += ["--ro-bind", str(source), target]
    return [*args, "--", *argv]


async def run_in(
    root: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    network: bool = True,
    ro_binds: Sequence[tuple[Path, str]] = (),
) -> Result:
    return await run(
        sandbox_argv(root, argv, network=network, ro_binds=ro_binds),
        env={**BASE_ENV, **(env or {})},
    )


@contextlib.contextmanager
def services_held(root: Path) -> Iterator[None]:
    """policy-rc.d forbids starting services while packages install, and a
    resolv.conf pointing at the host's resolver lets apt resolve names; both
    are removed afterwards (sysprep removes any resolv.conf the build left)."""
    policy = root / "usr/sbin/policy-rc.d"
    resolv = root / "etc/resolv.conf"
    policy.write_text(POLICY_RC)
    policy.chmod(0o755)
    original = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    mode = resolv.stat().st_mode if original is not None else 0o644  # put back as it was
    link = resolv.readlink() if resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("/run/kiln-resolv.conf")
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)
        if link is not None:
            resolv.symlink_to(link)
        elif original is not None:
            resolv.write_bytes(original)
            resolv.chmod(mode & 0o7777)
