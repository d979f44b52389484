"""Customising an existing image, for real: a local HTTP server, the format
inspector, qemu-img, sfdisk, loop devices, mounts and bubblewrap. Nothing is
left mounted or attached afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import REPO, ImageServer, loops_under, mounts_under

from kiln_builder.base.download import BaseDigestMismatch, FetchLimits, Pin, fetch_url
from kiln_builder.base.fetch import prune_bases
from kiln_builder.egress import LOCAL
from kiln_builder.engine import Bake, BakeOptions
from kiln_common.errors import FailedPrecondition, InvalidArgument, KilnError
from kiln_common.proc import run_sync
from kiln_recipe.loader import parse_recipe

if TYPE_CHECKING:
    from conftest import TestRootfs

MiB = 1 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ImageServer]:
    (tmp_path / "srv").mkdir()
    with ImageServer(tmp_path / "srv") as served:
        yield served


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the download ---------------------------------------------------------------------


def test_a_url_base_is_downloaded_once_and_then_read_from_the_cache(
    server: ImageServer, tmp_path: Path
) -> None:
    (server.root / "base.img").write_bytes(os.urandom(3 * MiB))
    digest = sha256(server.root / "base.img")
    cache = tmp_path / "cache"
    first = asyncio.run(fetch_url(f"{server.url}/base.img", Pin(digest), cache, FetchLimits()))
    second = asyncio.run(fetch_url(f"{server.url}/base.img", Pin(digest), cache, FetchLimits()))
    assert (first.downloaded, second.downloaded) == (3 * MiB, 0)
    assert first.path == second.path == cache / digest and sha256(second.path) == digest
    assert len(server.gets("base.img")) == 1


def test_a_cut_download_resumes_where_it_stopped(server: ImageServer, tmp_path: Path) -> None:
    (server.root / "base.img").write_bytes(os.urandom(5 * MiB))
    digest = sha256(server.root / "base.img")
    server.cut_first_after = 2 * MiB
    base = asyncio.run(fetch_url(f"{server.url}/base.img", Pin(digest), tmp_path, FetchLimits()))
    assert sha256(base.path) == digest
    ranges = [r["range"] for r in server.gets("base.img")]
    assert ranges[0] == "" and ranges[-1] == f"bytes={2 * MiB}-"


def test_a_digest_mismatch_fails_and_caches_nothing(server: ImageServer, tmp_path: Path) -> None:
    (server.root / "base.img").write_bytes(os.urandom(MiB))
    cache = tmp_path / "cache"
    with pytest.raises(BaseDigestMismatch, match="does not have the SHA-256"):
        asyncio.run(fetch_url(f"{server.url}/base.img", Pin("0" * 64), cache, FetchLimits()))
    assert [p.name for p in cache.iterdir()] == ["0" * 64 + ".lock"]  # no base, no part


def test_a_base_beyond_the_size_limit_is_refused(server: ImageServer, tmp_path: Path) -> None:
    (server.root / "base.img").write_bytes(os.urandom(2 * MiB))
    with pytest.raises(InvalidArgument, match="more than the limit"):
        asyncio.run(
            fetch_url(f"{server.url}/base.img", Pin("0" * 64), tmp_path, FetchLimits(max_bytes=MiB))
        )


def test_a_missing_url_is_a_clear_error(server: ImageServer, tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="answered 404"):
        asyncio.run(fetch_url(f"{server.url}/nothing.img", Pin("0" * 64), tmp_path, FetchLimits()))


# ---- whole customised builds ----------------------------------------------------------


def bake(recipe_text: str, work: Path, cache: Path) -> Bake:
    recipe = parse_recipe(recipe_text, work)
    options = BakeOptions(
        out_dir=work / "out", work_root=work / "work", cache_dir=cache, build_id="b1",
        boot_test=False, egress=LOCAL,  # the test's image server is on loopback
    )  # fmt: skip
    return Bake(recipe, options)


def recipe(url: str, digest: str, body: str) -> str:
    return (
        f'name: custom\nversion: "1"\nfrom:\n  image: {{url: "{url}", sha256: "{digest}"}}\n' + body
    )


def assert_nothing_held(work: Path) -> None:
    assert loops_under(work) == [] and mounts_under(work) == []


@pytest.mark.build
def test_a_compressed_bare_filesystem_is_customised_from_a_url_then_from_the_cache(
    test_rootfs: TestRootfs, server: ImageServer, tmp_path: Path
) -> None:
    run_sync(["zstd", "-q", "-T0", test_rootfs.image, "-o", server.root / "base.img"])
    digest = sha256(server.root / "base.img")
    text = recipe(
        f"{server.url}/base.img",
        digest,
        'files:\n  - {path: /etc/motd, content: "customised\\n"}\n'
        "run:\n  - inline: |\n      #!/bin/sh\n      echo made > /etc/kiln-made\n"
        "outputs: [raw]\ntest: {boot: false}\n",
    )
    cache = tmp_path / "cache"
    for attempt in (1, 2):
        work = tmp_path / f"build{attempt}"
        result = asyncio.run(bake(text, work, cache).run())
        assert_nothing_held(work)
        base_step = next(s for s in result.steps if s.name == "base")
        assert base_step.cached == (attempt == 2)
        assert result.base is not None and result.base.sha256 == digest
        assert "bare ext4 filesystem, zst-compressed" in result.base.description
        raw = result.outputs[0].path  # the base's own filesystem, changed in place
        for path, content in (("/etc/kiln-made", "made\n"), ("/etc/motd", "customised\n")):
            shown = run_sync(["debugfs", "-R", f"cat {path}", raw]).stdout
            assert shown.endswith(content)  # after debugfs's banner
    assert len(server.gets("base.img")) == 1  # the second build downloaded nothing


def partitioned_qcow2(rootfs: Path, dest: Path) -> None:
    """A GPT disk as clouds ship them: a BIOS boot partition, then the root."""
    raw = dest.with_suffix(".raw")
    run_sync(["truncate", "-s", str(rootfs.stat().st_size + 4 * MiB), raw])
    table = "label: gpt\nstart=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\n"
    table += "start=4096, type=L\n"
    run_sync(["sh", "-c", 'printf "%s" "$1" | sfdisk -q "$2"', "sh", table, raw])
    run_sync(["dd", f"if={rootfs}", f"of={raw}", "bs=1M", "seek=2", "conv=notrunc,sparse"])
    run_sync(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, dest])
    raw.unlink()


@pytest.mark.build
def test_a_partitioned_qcow2_is_grown_and_keeps_its_partitions(
    test_rootfs: TestRootfs, server: ImageServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    partitioned_qcow2(test_rootfs.image, server.root / "cloud.qcow2")
    text = recipe(
        f"{server.url}/cloud.qcow2",
        sha256(server.root / "cloud.qcow2"),
        'disk: {size: 2GiB}\nrun:\n  - inline: "df -k / | tail -1 > /etc/kiln-df"\n'
        "outputs: [raw]\ntest: {boot: false}\n",
    )
    with caplog.at_level(logging.INFO, logger="kiln_common.proc"):
        result = asyncio.run(bake(text, tmp_path / "b", tmp_path / "cache").run())
    assert_nothing_held(tmp_path / "b")
    # Found, grown, customised and read back on one attachment, scanned once.
    ran = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run: ")]
    assert len([c for c in ran if "losetup --find" in c and c.endswith("disk.raw")]) == 1, ran
    assert len([c for c in ran if c.startswith("run: partx -a")]) == 1, ran
    raw = result.outputs[0].path
    assert raw.stat().st_size == 2 << 30
    parts = json.loads(run_sync(["sfdisk", "--json", raw]).stdout)["partitiontable"]["partitions"]
    assert [(p["start"], p["type"]) for p in parts] == [
        (2048, "21686148-6449-6E6F-744E-656564454649"),
        (4096, "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ]
    assert parts[1]["start"] + parts[1]["size"] >= (2 << 30) // 512 - 34  # grown to the end
    offset = f"{raw}?offset={4096 * 512}"
    shown = run_sync(["debugfs", "-R", "cat /etc/kiln-df", offset]).stdout  # after a banner
    df = next(line for line in shown.splitlines() if line.startswith("/dev/")).split()
    assert int(df[1]) > 1_800_000  # KiB: the filesystem grew with its partition


SHARED_CACHE = REPO / ".cache/kiln"


class MountSampler:
    """Samples the host's mount table every 20 ms while a build runs: every
    mount that appears of a loop device (where a base's partition would be
    mounted) or under the build's workspace."""

    def __init__(self, work: Path) -> None:
        self.work = str(work.resolve())
        with open("/proc/self/mountinfo") as f:
            self.before = set(f.read().splitlines())
        self.seen: set[str] = set()
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            with open("/proc/self/mountinfo") as f:
                self.seen |= {m for m in set(f.read().splitlines()) - self.before if self._base(m)}
            self.samples += 1

    def _base(self, line: str) -> bool:
        fields = line.split()
        source = fields[fields.index("-") + 2]
        return source.startswith("/dev/loop") or fields[4].startswith(self.work)

    def __enter__(self) -> MountSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.build
def test_a_vm_build_of_a_foreign_base_never_mounts_it_on_the_host(
    test_rootfs: TestRootfs, server: ImageServer, tmp_path: Path
) -> None:
    """isolation: vm on a partitioned qcow2: the appliance grows the root, runs
    files, run and sysprep, and hands the tree back as a tar; the host's mount
    table, sampled through the whole build, never shows the base's filesystem."""
    partitioned_qcow2(test_rootfs.image, server.root / "foreign.qcow2")
    text = recipe(
        f"{server.url}/foreign.qcow2",
        sha256(server.root / "foreign.qcow2"),
        'disk: {size: 2GiB}\nisolation: vm\nfiles:\n  - {path: /etc/motd, content: "vm\\n"}\n'
        'run:\n  - inline: "df -k / | tail -1 > /etc/kiln-df; echo x > /var/log/kiln.log"\n'
        "outputs: [raw, tar]\ntest: {boot: false}\nchecks: [{profile: cloud, advisory: true}]\n",
    )
    work = tmp_path / "b"
    with MountSampler(work) as sampler:
        build = bake(text, work, SHARED_CACHE)  # the appliance, built once for the suite
        result = asyncio.run(build.run())
    assert sampler.samples > 100
    assert sampler.seen == set(), f"mounted on the host during the build: {sampler.seen}"
    assert [s.name for s in build.steps] == ["base", "appliance", "checks", "outputs"]
    assert_nothing_held(work)
    raw = next(o.path for o in result.outputs if o.format == "raw")
    parts = json.loads(run_sync(["sfdisk", "--json", raw]).stdout)["partitiontable"]["partitions"]
    assert parts[1]["start"] + parts[1]["size"] >= (2 << 30) // 512 - 34  # grown in the VM
    offset = f"{raw}?offset={4096 * 512}"
    df = run_sync(["debugfs", "-R", "cat /etc/kiln-df", offset]).stdout
    assert int(next(ln for ln in df.splitlines() if ln.startswith("/dev/")).split()[1]) > 1_800_000
    assert run_sync(["debugfs", "-R", "cat /etc/motd", offset]).stdout.endswith("vm\n")
    assert "kiln.log" in run_sync(["debugfs", "-R", "ls -l /var/log", offset]).stdout
    log_text = run_sync(["debugfs", "-R", "cat /var/log/kiln.log", offset]).stdout
    assert log_text.splitlines()[1:] == []  # emptied by sysprep, in the VM (after the banner)
    tar = next(o.path for o in result.outputs if o.format == "tar")
    names = run_sync(["tar", "-tf", tar]).stdout.splitlines()
    assert "./etc/motd" in names and "./etc/kiln-df" in names  # the tree the VM handed back
    assert build.check_report is not None  # the checks read the handed-back tree


@pytest.mark.build
def test_disk_size_smaller_than_the_base_is_refused(
    test_rootfs: TestRootfs, server: ImageServer, tmp_path: Path
) -> None:
    partitioned_qcow2(test_rootfs.image, server.root / "cloud.qcow2")
    text = recipe(
        f"{server.url}/cloud.qcow2",
        sha256(server.root / "cloud.qcow2"),
        "disk: {size: 512MiB}\noutputs: [raw]\ntest: {boot: false}\n",
    )
    with pytest.raises(KilnError, match="virtual size"):
        asyncio.run(bake(text, tmp_path / "b", tmp_path / "cache").run())
    assert_nothing_held(tmp_path / "b")


def test_a_qcow2_backed_by_a_host_file_is_refused_before_any_tool_reads_it(
    server: ImageServer, tmp_path: Path
) -> None:
    # The backing file is a FIFO: any tool that opened it would block there,
    # and the build would never end.
    fifo = tmp_path / "host-secret"
    os.mkfifo(fifo)
    image = server.root / "evil.qcow2"
    run_sync(
        ["qemu-img", "create", "-q", "-u", "-f", "qcow2", "-F", "raw", "-b", fifo, image, "1G"]
    )
    text = recipe(
        f"{server.url}/evil.qcow2", sha256(image), "outputs: [raw]\ntest: {boot: false}\n"
    )
    with pytest.raises(KilnError, match="refused: backing_file"):
        asyncio.run(asyncio.wait_for(bake(text, tmp_path / "b", tmp_path / "cache").run(), 60))
    with pytest.raises(OSError):  # ENXIO: nobody has the FIFO open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert_nothing_held(tmp_path / "b")


@pytest.mark.build
def test_a_disk_without_a_linux_root_says_what_it_found(
    server: ImageServer, tmp_path: Path
) -> None:
    raw = server.root / "data.raw"
    run_sync(["truncate", "-s", "64M", raw])
    run_sync(
        ["sh", "-c", 'printf "label: dos\\nstart=2048, type=c\\n" | sfdisk -q "$1"', "sh", raw]
    )
    run_sync(["mkfs.vfat", "--offset=2048", "-n", "DATA", raw])
    text = recipe(f"{server.url}/data.raw", sha256(raw), "outputs: [raw]\ntest: {boot: false}\n")
    with pytest.raises(KilnError, match=r"no Linux root filesystem.*partition 1: vfat"):
        asyncio.run(bake(text, tmp_path / "b", tmp_path / "cache").run())
    assert_nothing_held(tmp_path / "b")


def test_a_base_without_a_kernel_cannot_be_boot_tested(server: ImageServer, tmp_path: Path) -> None:
    run_sync(["truncate", "-s", "16M", server.root / "fs.ext3"])
    run_sync(["mkfs.ext3", "-q", server.root / "fs.ext3"])
    text = recipe(f"{server.url}/fs.ext3", sha256(server.root / "fs.ext3"), "outputs: [ext3]\n")
    recipe_ = parse_recipe(text, tmp_path)
    options = BakeOptions(out_dir=tmp_path / "out", work_root=tmp_path / "w",
                          cache_dir=tmp_path / "c", build_id="b", egress=LOCAL)  # fmt: skip
    with pytest.raises(FailedPrecondition, match=r"set test: \{boot: false\}"):
        asyncio.run(Bake(recipe_, options).run())
    shutil.rmtree(tmp_path / "c")


@pytest.mark.build
def test_requirement_checks_run_on_the_customised_tree(
    test_rootfs: TestRootfs, server: ImageServer, tmp_path: Path
) -> None:
    """Seed 004's rules on a bare filesystem base: what the user steps changed
    counts (/etc/hosts written by the script), what the base lacks fails the
    build naming the rule and file, and nothing is left mounted."""
    shutil.copy(test_rootfs.image, server.root / "tycoon.ext4")
    text = recipe(
        f"{server.url}/tycoon.ext4",
        sha256(server.root / "tycoon.ext4"),
        "run:\n  - inline: \"printf '127.0.0.1 localhost\\\\n' > /etc/hosts\"\n"
        "outputs: [qcow2, ext3]\ntest: {boot: false}\n"
        "checks: [tycoon, {profile: cloud, advisory: true}]\n",
    )
    work = tmp_path / "b"
    build = bake(text, work, tmp_path / "cache")
    with pytest.raises(FailedPrecondition) as caught:
        asyncio.run(build.run())
    assert str(caught.value).startswith(
        "step checks failed: 2 requirement checks failed: tycoon.ssh-enabled (/usr/sbin/sshd: "
        "the OpenSSH server is not installed (add openssh-server to packages)); "
        "tycoon.network-config (/etc/network/interfaces: no configuration for a network interface"
    )
    assert_nothing_held(work)
    assert [s.name for s in build.steps] == ["base", "run", "sysprep", "checks"]
    report = build.check_report
    assert report is not None
    found = {r.rule: r for r in report.results}
    assert found["tycoon.network-config"].why != "missing"  # the script wrote /etc/hosts
    assert found["tycoon.ext3-image"].passed and found["tycoon.console"].passed
    bootable = found["cloud.bootable-disk"]  # a bare filesystem in a qcow2 boots nowhere
    assert (bootable.passed, bootable.advisory, bootable.file) == (False, True, "outputs")
    assert "no partition table" in bootable.why
    assert not found["cloud.serial-console"].passed  # the base has no boot loader config
    assert sorted(p.name for p in (work / "out").iterdir()) == ["custom-1.checks.json"]


def test_cached_bases_beyond_the_budget_go_least_recently_used_first(tmp_path: Path) -> None:
    bases = tmp_path / "bases"
    bases.mkdir()
    for age, name in enumerate(["a" * 64, "b" * 64, "c" * 64]):
        (bases / name).write_bytes(bytes(MiB))
        os.utime(bases / name, (1_000 + age, 1_000 + age))
    (bases / ("d" * 64 + ".part")).write_bytes(bytes(MiB))  # a download in progress
    assert [p.name for p in prune_bases(tmp_path, 2 * MiB)] == ["a" * 64]
    assert sorted(p.name for p in bases.iterdir()) == ["b" * 64, "c" * 64, "d" * 64 + ".part"]
