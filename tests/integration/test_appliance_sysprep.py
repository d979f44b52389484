"""Sysprep has two implementations: customize.sysprep on the host (through
imageroot), and appliance/sysprep.sh, which the appliance runs chrooted in a
customised base's image in vm mode (the host never mounts that image). Both
are run here on two copies of the same real Debian tree, seeded with what
sysprep removes and with links that must not be followed, and the trees must
come out the same: every path, its type, mode, owner, size and content."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _bootstrap_into
from support import scratch

from kiln_builder import customize
from kiln_builder.isolation.appliance.image import SYSPREP
from kiln_builder.isolation.appliance.job import SYSPREP as KNOWN
from kiln_builder.isolation.sandbox import run_in
from kiln_common.proc import run_sync
from kiln_recipe.schema import SYSPREP_OPERATIONS

pytestmark = [pytest.mark.integration, pytest.mark.build]


def seed(root: Path) -> None:
    """What sysprep must remove or empty, and links it must leave alone."""
    files = {
        "etc/ssh/ssh_host_ed25519_key": "secret", "etc/ssh/ssh_host_ed25519_key.pub": "pub",
        "etc/ssh/sshd_config": "PermitRootLogin no\n", "etc/machine-id": "0123456789abcdef\n",
        "var/lib/dbus/machine-id": "x", "etc/udev/rules.d/70-persistent-net.rules": "rule",
        "var/log/syslog": "log", "var/log/syslog.1": "old", "var/log/apt/history.log.1.gz": "z",
        "var/log/nested/deep/app.log": "deep", "root/.bash_history": "ls",
        "home/alice/.bash_history": "ls", "var/lib/apt/lists/mirror_dists_InRelease": "list",
        "var/lib/apt/lists/auxfiles/x": "kept", "var/cache/apt/archives/hello.deb": "deb",
        "var/cache/apt/pkgcache.bin": "bin", "etc/resolv.conf": "nameserver 10.0.0.1\n",
        "etc/kiln-outside": "must stay\n",
    }  # fmt: skip
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).unlink(missing_ok=True)
        (root / path).write_text(text)
    (root / "var/log/to-etc").symlink_to("/etc")  # a link: neither entered nor emptied
    (root / "var/log/motd-link").symlink_to("/etc/kiln-outside")
    shadow = (root / "etc/shadow").read_text().replace("root:*:", "root:$6$hash:", 1)
    (root / "etc/shadow").write_text(shadow)


def listing(root: Path) -> dict[str, tuple[str, int, int, int, str]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what = "link " + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = ""
            key = str(path.relative_to(root))
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size  # a copy packs directories
            found[key] = (what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size)
    return found


@pytest.fixture(scope="module")
def trees(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    with scratch(request, "sysprep") as where:
        host, shell = where / "host", where / "shell"
        asyncio.run(_bootstrap_into(host))
        seed(host)
        run_sync(["cp", "-a", host, shell], timeout=300)
        yield host, shell


async def test_the_host_and_the_appliance_sysprep_agree(trees: tuple[Path, Path]) -> None:
    host, shell = trees
    assert set(SYSPREP_OPERATIONS) <= set(KNOWN)
    customize.sysprep(host, SYSPREP_OPERATIONS)
    # As the appliance runs it: the image's own /bin/sh, chrooted (here the sandbox).
    await run_in(shell, ["/bin/sh", "/tmp/kiln-sysprep.sh", *SYSPREP_OPERATIONS],
                 ro_binds=[(SYSPREP, "/tmp/kiln-sysprep.sh")], network=False)  # fmt: skip
    by_host, by_shell = listing(host), listing(shell)
    differ = sorted(k for k in {*by_host, *by_shell} if by_host.get(k) != by_shell.get(k))
    assert differ == [], [(k, by_host.get(k), by_shell.get(k)) for k in differ[:10]]
    assert (host / "etc/kiln-outside").read_text() == "must stay\n"
    assert (host / "etc/machine-id").read_text() == ""
    assert (
        not (host / "var/log/syslog.1").exists() and (host / "var/log/syslog").stat().st_size == 0
    )
    assert "\nroot:*:" in "\n" + (host / "etc/shadow").read_text()
    assert sorted(p.name for p in (host / "var/lib/apt/lists").iterdir()) >= ["auxfiles"]
