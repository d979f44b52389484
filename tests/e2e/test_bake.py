"""kiln-builder bake, for real: mmdebstrap, the sandbox, a partitioned disk,
GRUB, outputs, a boot test under QEMU; and no loop device, mount or VM left
behind, whether the build succeeds, is interrupted, or is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import (
    CACHE_MAX_GIB,
    REPO,
    kiln_domains,
    loops_under,
    mounts_under,
    scratch,
    stack_token,
    wait_until,
)

from kiln_common.proc import run_sync

pytestmark = [pytest.mark.e2e, pytest.mark.build]

BUILDER = str(Path(sys.executable).parent / "kiln-builder")
CACHE = REPO / ".cache/kiln"  # shared by every build test (and kept between runs)

RECIPE = """\
name: web
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
packages: [openssh-server]
files:
  - {path: /var/www/html/cloud.txt, content: "CONTENT", mode: "0640"}
run:
  - inline: "echo built-by-kiln > /etc/kiln-release"
disk: {size: 2GiB, filesystem: FS, partitioning: PART}
outputs: OUTPUTS
test:
  boot: {timeout: 300s}
"""


def write_recipe(
    where: Path,
    content: str = "Cloudy Weather Expected",
    fs: str = "ext4",
    partitioning: str = "gpt",
    script: str = "echo built-by-kiln > /etc/kiln-release",
    outputs: str = "[qcow2, raw]",
) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    path = where / "recipe.yaml"
    text = RECIPE.replace("CONTENT", content).replace("FS", fs).replace("PART", partitioning)
    text = text.replace("OUTPUTS", outputs)
    path.write_text(text.replace("echo built-by-kiln > /etc/kiln-release", script))
    return path


def bake(recipe: Path, out: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUILDER, "bake", str(recipe), "--out", str(out), "--cache-dir", str(CACHE),
         "--work-root", str(work), "--cache-max-gib", CACHE_MAX_GIB, *extra],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip


def debugfs(raw: Path, offset: int, request: str) -> str:
    """Runs a debugfs request on the ext4 root inside the disk image, unmounted."""
    fs = raw.with_suffix(".rootfs")
    subprocess.run(["dd", f"if={raw}", f"of={fs}", "bs=1M", f"skip={offset // 2**20}",
                    "status=none"], check=True)  # fmt: skip
    try:
        return subprocess.run(
            ["debugfs", "-R", request, str(fs)], capture_output=True, text=True, check=True
        ).stdout
    finally:
        fs.unlink()


@pytest.fixture(scope="module")
def first_build(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Path, subprocess.CompletedProcess[str]]]:
    with scratch(request, "bake") as base:
        done = bake(write_recipe(base), base / "out", base / "work")
        assert done.returncode == 0, done.stderr
        yield base, done


def test_a_recipe_builds_boots_and_leaves_nothing_behind(first_build) -> None:  # type: ignore[no-untyped-def]
    base, done = first_build
    out = base / "out"
    assert "==> boot-test" in done.stderr
    sums = dict(reversed(line.split()) for line in (out / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"web-1.0.qcow2", "web-1.0.raw"}
    info = json.loads(run_sync(["qemu-img", "info", "--output=json", out / "web-1.0.qcow2"]).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == 2 * 2**30
    console = (out / "web-1.0.console.log").read_text(errors="replace")
    assert "login:" in console and "Linux version" in console
    # The boot test's disk is 1 GiB bigger than the image: the root grew into it.
    assert "CHANGED: partition=2" in console
    sbom = json.loads((out / "web-1.0.spdx.json").read_text())
    names = {p["name"] for p in sbom["packages"]}
    assert {"openssh-server", "systemd", "linux-image-amd64"} <= names

    raw = out / "web-1.0.raw"
    root_offset = 4096 * 512
    assert debugfs(raw, root_offset, "cat /var/www/html/cloud.txt") == "Cloudy Weather Expected"
    assert debugfs(raw, root_offset, "cat /etc/kiln-release") == "built-by-kiln\n"
    assert debugfs(raw, root_offset, "cat /etc/machine-id") == ""
    assert debugfs(raw, root_offset, "cat /etc/fstab").startswith("UUID=")
    listing = debugfs(raw, root_offset, "ls /etc/ssh")
    assert "sshd_config" in listing and "ssh_host_" not in listing

    work = base / "work"
    assert loops_under(work) == [] and mounts_under(work) == []
    assert not any(work.iterdir())
    assert kiln_domains() == []


def test_a_late_change_rebuilds_only_the_steps_after_it(first_build) -> None:  # type: ignore[no-untyped-def]
    base, _ = first_build
    # Unique content: the cache outlives test runs, and this change must be new.
    recipe = write_recipe(
        base / "changed", content=f"Sunny Spells Expected {time.time_ns()}", outputs="[raw]"
    )
    done = bake(recipe, base / "changed-out", base / "work", "--no-boot-test")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    for step in ("bootstrap", "packages"):
        assert any(
            line.strip().startswith(f"{step} done") and "cached" in line for line in lines
        ), step
    for step in ("files", "run", "sysprep"):
        assert any(
            line.strip().startswith(f"{step} done") and "cached" not in line for line in lines
        ), step


def _start_and_wait_for_a_loop(recipe: Path, base: Path) -> subprocess.Popen[str]:
    work = base / "work"
    proc = subprocess.Popen(
        [BUILDER, "bake", str(recipe), "--out", str(base / "out"), "--cache-dir", str(CACHE),
         "--work-root", str(work), "--cache-max-gib", CACHE_MAX_GIB, "--no-boot-test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A test run in the background inherits SIGINT ignored; the bake must hear it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    wait_until(
        "a mount under the work root", lambda: mounts_under(work) or proc.poll() is not None, 600
    )
    assert proc.poll() is None, proc.communicate()[1]
    return proc


def test_a_killed_bake_is_cleaned_up_by_the_janitor(first_build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # xfs is filled through a loop device and a mount: kill the build right then.
    proc = _start_and_wait_for_a_loop(write_recipe(tmp_path, fs="xfs"), tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    work = tmp_path / "work"
    assert mounts_under(work) or loops_under(work), "the kill should have left something"
    done = subprocess.run([BUILDER, "janitor", "--work-root", str(work)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "released" in done.stdout
    assert loops_under(work) == [] and mounts_under(work) == [] and not any(work.iterdir())


def test_an_interrupted_bake_releases_everything_itself(first_build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc = _start_and_wait_for_a_loop(write_recipe(tmp_path, fs="xfs"), tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; resources released" in err and "Traceback" not in err
    work = tmp_path / "work"
    assert loops_under(work) == [] and mounts_under(work) == [] and not any(work.iterdir())
    assert not list((tmp_path / "out").glob("web-1.0.*")), "no output may look whole"


def test_a_bad_recipe_fails_before_any_work(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "name: web\nversion: '1'\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n"
        "disk: {size: 4GB}\n"
    )
    done = bake(recipe, tmp_path / "out", tmp_path / "work")
    assert done.returncode == 2
    assert "5: disk.size" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def _step_line(stderr: str, step: str) -> str:
    return next(line for line in stderr.splitlines() if line.strip().startswith(f"{step} done"))


def test_a_corrupt_layer_is_discarded_and_rebuilt(first_build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _ = first_build
    # A tar output: the layers are what is tested, and no disk need be made.
    recipe = write_recipe(tmp_path, content=f"corrupt test {time.time_ns()}", outputs="[tar]")
    done = bake(recipe, tmp_path / "out", base / "work", "--no-boot-test")
    assert done.returncode == 0, done.stderr
    newest = max(
        CACHE.joinpath("layers").glob("sysprep-*.tar.zst"), key=lambda p: p.stat().st_mtime
    )
    with open(newest, "r+b") as layer:  # flip bytes in the middle: same size, wrong sum
        layer.seek(newest.stat().st_size // 2)
        layer.write(b"\0corrupt\0" * 64)
    again = bake(recipe, tmp_path / "out2", base / "work", "--no-boot-test")
    assert again.returncode == 0, again.stderr
    assert "corrupt: discarded" in again.stderr
    assert "cached" not in _step_line(again.stderr, "sysprep")
    assert "cached" in _step_line(again.stderr, "run")


def test_layers_are_shared_through_the_storage_service(first_build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _ = first_build
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    kiln = str(Path(sys.executable).parent / "kiln")
    subprocess.run([kiln, "up"], env=env, check=True, capture_output=True)
    try:
        with stack_token(tmp_path / "home"):
            stack = json.loads((tmp_path / "home/stack.json").read_text())
            recipe = write_recipe(tmp_path, content=f"shared {time.time_ns()}", outputs="[raw]")
            # One builder builds the late steps and shares them ...
            first = bake(recipe, tmp_path / "out1", base / "work", "--no-boot-test",
                         "--storage", stack["storage"])  # fmt: skip
            assert first.returncode == 0, first.stderr
            listed = subprocess.run(
                [kiln, "artifact", "ls", "--label", "name=layer-sysprep"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            assert len(listed.stdout.splitlines()) == 1
            # ... another, with an empty cache of its own, starts from the shared layer.
            other = subprocess.run(
                [BUILDER, "bake", str(recipe), "--out", str(tmp_path / "out2"),
                 "--cache-dir", str(tmp_path / "empty-cache"), "--work-root", str(base / "work"),
                 "--no-boot-test", "--storage", stack["storage"]],
                capture_output=True, text=True, timeout=1200, check=False,
            )  # fmt: skip
            assert other.returncode == 0, other.stderr
            for step in ("bootstrap", "packages", "files", "run", "sysprep"):
                assert "cached" in _step_line(other.stderr, step), step
            sums = [(tmp_path / out / "SHA256SUMS").read_text() for out in ("out1", "out2")]
            assert sums[0] == sums[1], "the same layers must give the same image"
    finally:
        subprocess.run([kiln, "down"], env=env, check=False, capture_output=True)


REPRODUCIBLE = """\
name: web
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
files:
  - {path: /var/www/html/cloud.txt, content: "Cloudy Weather Expected", mode: "0640"}
run:
  - inline: "echo built-by-kiln > /etc/kiln-release"
disk: {size: 2GiB}
outputs: [raw]
test: {boot: false}
"""


MINUTE_APART = 61  # seconds between the starts of the two builds


def test_the_same_recipe_twice_without_cache_gives_the_same_image(tmp_path: Path) -> None:
    """Reproducible builds: same recipe, same mirror (within minutes), no cache at
    all (not even the bootstrap) -> the same raw disk image, byte for byte. (No
    packages step: the bootstrap already runs apt and dpkg, at half the time.)
    The two builds run side by side, in workspaces and caches of their own (each
    waits on the mirror and on the disk much of the time), the second started a
    minute after the first, so that a clock read into the image, to the minute,
    would differ between them."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(REPRODUCIBLE)

    def build(run: str) -> subprocess.CompletedProcess[str]:
        if run == "b":
            time.sleep(MINUTE_APART)
        return bake(recipe, tmp_path / f"out-{run}", tmp_path / f"work-{run}", "--no-cache",
                    "--no-boot-test", "--cache-dir", str(tmp_path / f"cache-{run}"))  # fmt: skip

    with ThreadPoolExecutor(2) as pool:
        for done in pool.map(build, ("a", "b")):
            assert done.returncode == 0, done.stderr
    digests = []
    for run in ("a", "b"):
        sums = (tmp_path / f"out-{run}" / "SHA256SUMS").read_text()
        digests.append(next(line for line in sums.splitlines() if line.endswith(".raw")))
    assert digests[0] == digests[1]


TRIXIE = """\
name: trixie
version: "1"
from:
  bootstrap: {distro: debian, release: trixie}
packages: [openssh-server]
disk: {size: 2GiB, filesystem: ext3, partitioning: gpt}
outputs: [qcow2, raw]
"""


def layout_of(raw: Path) -> tuple[str, str]:
    """(partition table label, filesystem type of the last partition)."""
    table = json.loads(run_sync(["sfdisk", "--json", raw]).stdout)["partitiontable"]
    offset = table["partitions"][-1]["start"] * table.get("sectorsize", 512)
    probe = ["blkid", "-p", "-O", str(offset), "-s", "TYPE", "-o", "value", raw]
    return str(table["label"]), run_sync(probe).stdout.strip()


def test_trixie_on_gpt_and_ext3_builds_and_boots(tmp_path: Path) -> None:
    """Another release and another layout in one boot (each boot costs a minute)."""
    recipe = tmp_path / "trixie.yaml"
    recipe.write_text(TRIXIE)
    done = bake(recipe, tmp_path / "out", tmp_path / "work")
    assert done.returncode == 0, done.stderr
    console = (tmp_path / "out/trixie-1.console.log").read_text(errors="replace")
    assert "login:" in console and "Debian GNU/Linux 13" in console
    assert layout_of(tmp_path / "out/trixie-1.raw") == ("gpt", "ext3")


def test_an_mbr_disk_with_xfs_boots(first_build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = write_recipe(tmp_path, fs="xfs", partitioning="mbr")
    done = bake(recipe, tmp_path / "out", tmp_path / "work")
    assert done.returncode == 0, done.stderr
    console = (tmp_path / "out/web-1.0.console.log").read_text(errors="replace")
    assert "login:" in console and "CHANGED: partition=" in console
    assert layout_of(tmp_path / "out/web-1.0.raw") == ("dos", "xfs")


def test_a_failing_script_names_its_step_and_the_workspace_can_be_kept(
    first_build, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    recipe = write_recipe(tmp_path, script="echo about to fail; exit 3")
    work = tmp_path / "work"
    done = bake(recipe, tmp_path / "out", work, "--no-boot-test", "--keep-workspace")
    assert done.returncode == 1
    assert "build failed: step run failed" in done.stderr
    assert "exit status 3" in done.stderr and "about to fail" in done.stderr
    assert "Traceback" not in done.stderr
    kept = [p for p in work.iterdir() if p.is_dir()]
    assert len(kept) == 1 and (kept[0] / "root/etc/os-release").exists()
    assert loops_under(work) == [] and mounts_under(work) == []
    subprocess.run([BUILDER, "janitor", "--work-root", str(work)], check=True, capture_output=True)
    assert kept[0].exists(), "the janitor leaves a workspace kept for inspection"
    again = bake(recipe, tmp_path / "out", tmp_path / "work2", "--no-boot-test")
    assert again.returncode == 1 and not any((tmp_path / "work2").iterdir())


CHECKED = """\
name: checked
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [tar.zst]
checks: [PROFILES]
test: {boot: false}
"""


def test_a_failed_requirement_check_fails_the_bake_naming_rule_file_and_why(
    tmp_path: Path,
) -> None:
    """Seed 004's rules on a bare bootstrap (no openssh-server, no /etc/hosts):
    the build stops before any output, the report is kept; marked advisory,
    the same tree builds."""
    recipe = tmp_path / "checked.yaml"
    recipe.write_text(CHECKED.replace("PROFILES", "tycoon, {profile: cloud, advisory: true}"))
    out, work = tmp_path / "out", tmp_path / "work"
    done = bake(recipe, out, work)
    assert done.returncode == 1, done.stderr
    assert "build failed: step checks failed: 3 requirement checks failed: " in done.stderr
    assert "tycoon.ssh-enabled (/usr/sbin/sshd: the OpenSSH server is not installed" in done.stderr
    assert "tycoon.network-config (/etc/hosts: missing)" in done.stderr
    assert "check FAIL tycoon.ext3-image: outputs: no ext3 filesystem image" in done.stderr
    assert "check WARN cloud.contextualisation: /usr/bin/cloud-init: " in done.stderr
    assert "check PASS cloud.serial-console: /boot/grub/grub.cfg: console=ttyS0" in done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in out.iterdir()] == ["checked-1.checks.json"]  # no image, no sums
    report = json.loads((out / "checked-1.checks.json").read_text())
    assert report["passed"] is False and len(report["results"]) == 11
    assert loops_under(work) == [] and mounts_under(work) == [] and not any(work.iterdir())

    recipe.write_text(CHECKED.replace("PROFILES", "{profile: tycoon, advisory: true}"))
    done = bake(recipe, tmp_path / "out2", work)
    assert done.returncode == 0, done.stderr
    assert "check WARN tycoon.ssh-enabled: /usr/sbin/sshd: " in done.stderr
    assert f"{tmp_path / 'out2/checked-1.checks.json'}  (requirement checks)" in done.stdout
    assert json.loads((tmp_path / "out2/checked-1.checks.json").read_text())["passed"] is True
    assert (tmp_path / "out2/checked-1.tar.zst").is_file()
