"""Nothing from a recipe reaches the build host: a recipe's `run` step aims
links at a directory and a file of the build host from every path the builder
writes or reads after user code ran (the disk step's fstab, GRUB, units and
network file; sysprep's logs, keys, shadow, machine-id, apt lists; the checks'
reads; the outputs; the kernels). The build then runs to the end, under an audit
hook that records any host path call under the tree, with inotify watching the
host's directory: nothing there may be created, changed, opened or read, by the
builder or any tool it runs, and no byte of it may reach an artifact.

Both isolation modes, through `kiln-builder bake` (under the audit hook) and
through the service (`kiln up`, `kiln build`), whose stored artifacts and logs
are searched for the host file's bytes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from host_watch import HostWatch, snapshot
from support import CACHE_MAX_GIB, REPO, kiln, kiln_up, scratch

pytestmark = [pytest.mark.e2e, pytest.mark.build]

CACHE = REPO / ".cache/kiln"
AUDITED = Path(__file__).with_name("audited_builder.py")
# Every path the builder touches after the recipe's own steps, with what the
# planted link points at: the host's directory (D) or file (F).
PLANTED = {
    "/etc/fstab": "F", "/boot/grub": "D", "/etc/systemd/system/multi-user.target.wants": "D",
    "/usr/local/sbin": "D", "/etc/systemd/network": "D",
    "/etc/systemd/system/kiln-growroot.service": "F",
    "/etc/systemd/system/kiln-ssh-host-keys.service": "F", "/etc/machine-id": "F",
    "/var/lib/dbus/machine-id": "F", "/var/log": "D", "/etc/ssh": "D", "/root": "D",
    "/var/lib/apt/lists": "D", "/var/cache/apt": "D", "/var/cache/ldconfig": "D",
    "/etc/os-release": "F", "/usr/lib/os-release": "F", "/etc/shadow": "F",
    "/etc/passwd": "F", "/etc/resolv.conf": "F", "/etc/hostname": "F",
    "/etc/network": "D", "/etc/default/grub": "F", "/etc/kiln-host-file": "F",
    "/boot/vmlinuz-9.9.9-planted": "F", "/boot/initrd.img-9.9.9-planted": "F",
    "/etc/dotdot": "..F",
}  # fmt: skip
# Names in the host's directory that a followed link would make the builder touch.
HOST_NAMES = [
    "grub.cfg", "aux-cache", "ssh_host_planted_key", ".bash_history", "syslog", "syslog.1",
    "pkgcache.bin", "80-kiln-dhcp.network", "kiln-growroot", "kiln-growroot.service",
    "lock", "interfaces", "sshd_config",
]  # fmt: skip


def plant_script(host: Path) -> str:
    lines = ["set -e", 'plant() { rm -rf "$1"; mkdir -p "$(dirname "$1")"; ln -s "$2" "$1"; }']
    for path, kind in PLANTED.items():
        target = {"D": host / "dir", "F": host / "file"}.get(kind)
        aim = str(target) if target else "../../../../../.." + str(host / "file")
        lines.append(f"plant {path} {aim}")
    return "\n".join(lines) + "\n"


RECIPE = """\
name: planted
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
isolation: MODE
run:
  - script: plant.sh
checks: [{profile: tycoon, advisory: true}, {profile: cloud, advisory: true}]
disk: {size: 2GiB, filesystem: ext4, partitioning: gpt}
outputs: [raw, tar, ext4]
test: {boot: false}
"""


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest) -> Iterator[tuple[Path, bytes]]:
    """The build host's directory the links aim at: a file with a marker, and a
    directory holding every name a followed link would touch."""
    with scratch(request, "host") as where:
        marker = f"HOST-MARKER-{secrets.token_hex(8)}".encode()
        (where / "file").write_bytes(marker + b"\n")
        (where / "dir/partial").mkdir(parents=True)
        for name in HOST_NAMES:
            (where / "dir" / name).write_bytes(marker + b" " + name.encode() + b"\n")
        yield where, marker


def write_recipe(recipe_dir: Path, host: Path, mode: str = "sandbox") -> Path:
    recipe_dir.mkdir(parents=True)
    (recipe_dir / "plant.sh").write_text(plant_script(host))
    (recipe_dir / "recipe.yaml").write_text(RECIPE.replace("MODE", mode))
    return recipe_dir / "recipe.yaml"


def audited_bake(base: Path, host: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str],
                                                                 list[dict[str, str]]]:  # fmt: skip
    recipe_dir = base / "recipe"
    write_recipe(recipe_dir, host)
    report = base / "audit.jsonl"
    work = base / "work"
    done = subprocess.run(
        [sys.executable, str(AUDITED), str(report), str(work), "--",
         "bake", str(recipe_dir / "recipe.yaml"), "--out", str(base / "out"),
         "--cache-dir", str(CACHE), "--work-root", str(work), "--cache-max-gib", CACHE_MAX_GIB,
         *extra],
        capture_output=True, text=True, timeout=1800, check=False,
        # A home of its own: no `kiln up` stack's storage shares layers with this build.
        env={**os.environ, "KILN_HOME": str(base / "home"), "KILN_STORAGE": ""},
    )  # fmt: skip
    calls = (
        [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    )
    return done, calls


def contains(path: Path, marker: bytes) -> bool:
    with open(path, "rb") as handle:
        tail = b""
        while block := handle.read(16 << 20):
            if marker in tail + block:
                return True
            tail = block[-len(marker) :]
    return False


@pytest.mark.parametrize("mode", ["sandbox", "vm"])
def test_links_planted_by_a_recipe_never_reach_the_build_host(
    request: pytest.FixtureRequest, host: tuple[Path, bytes], mode: str
) -> None:
    where, marker = host
    before = snapshot(where)
    watch = HostWatch(where)
    try:
        with scratch(request, f"planted-{mode}") as base:
            extra = ["--vm"] if mode == "vm" else []
            done, calls = audited_bake(base, where, *extra)
            touches = watch.touches()
            outputs = sorted(p for p in (base / "out").iterdir() if p.is_file())
            leaked = [p.name for p in outputs if contains(p, marker)]
    finally:
        watch.close()
    after = snapshot(where)
    changed = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
    problems = [
        *(["the build failed: " + done.stderr[-3000:]] if done.returncode else []),
        *([f"the build host's files were touched: {touches[:10]}"] if touches else []),
        *([f"the build host's files changed: {changed}"] if changed else []),
        *([f"the host file's bytes reached {leaked}"] if leaked else []),
        *(["the host file's bytes reached the log"] if marker.decode() in done.stderr else []),
        *[f"host path call under the tree: {c['event']} {c['path']}\n{c['stack']}"
          for c in calls[:3]],
    ]  # fmt: skip
    assert problems == [], "\n".join(problems)
    wanted = {f"planted-1.0.{kind}" for kind in ("raw", "tar", "ext4", "spdx.json")}
    assert {p.name for p in outputs} >= wanted


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    with scratch(request, "planted-stack") as where, kiln_up(where) as environ:
        yield environ


def holding(top: Path, marker: bytes) -> list[str]:
    return [str(p) for p in sorted(top.rglob("*")) if p.is_file() and contains(p, marker)]


@pytest.mark.parametrize("mode", ["sandbox", "vm"])
def test_links_planted_through_the_service_never_reach_the_build_host(
    request: pytest.FixtureRequest, host: tuple[Path, bytes], stack: dict[str, str], mode: str
) -> None:
    """The same plants through `kiln build` on a `kiln up` stack: the build
    succeeds, the host's directory is never touched, and no stored artifact,
    build log or service log holds a byte of the host file."""
    where, marker = host
    before = snapshot(where)
    watch = HostWatch(where)
    try:
        with scratch(request, f"planted-service-{mode}") as base:
            recipe = write_recipe(base / "recipe", where, mode)
            done = kiln(stack, "build", str(recipe), "--follow", check=False, timeout=1800)
            touches = watch.touches()
    finally:
        watch.close()
    assert done.returncode == 0, done.stderr[-3000:]
    build_id = done.stderr.split()[1]
    shown = json.loads(kiln(stack, "build", "show", build_id, "--json").stdout)
    assert shown["state"] == "BUILD_STATE_SUCCEEDED" and shown["isolation"] == mode
    assert touches == [], f"the build host's files were touched: {touches[:10]}"
    home = Path(stack["KILN_HOME"])
    assert holding(home, marker) == []  # stored artifacts, build logs, service logs
    assert marker.decode() not in done.stderr
    assert snapshot(where) == before
