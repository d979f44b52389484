"""vm isolation mode without a VM: the job disk's encoding, the report
channel's parsing, the appliance's initramfs and the guest's network rules."""

from __future__ import annotations

import contextlib
import io
import stat
import tarfile
from pathlib import Path

import pytest

from kiln_builder.engine import DEFAULT_EPOCH
from kiln_builder.isolation.appliance import (
    Job,
    Packages,
    Report,
    RunScript,
    Sysprep,
    WriteFile,
    encode,
)
from kiln_builder.isolation.appliance.image import EPOCH, Appliance, kib
from kiln_builder.isolation.appliance.initramfs import cpio, load_order
from kiln_builder.isolation.appliance.network import host_mirrors, netdev_args, relays
from kiln_builder.isolation.appliance.runner import qemu_argv
from kiln_builder.vm import Accel
from kiln_common.errors import FailedPrecondition, InvalidArgument


def job_files(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def test_a_job_encodes_as_one_value_files_numbered_in_order() -> None:
    job = Job(
        (
            Packages(("hello", "curl")),
            WriteFile("/etc/motd", b"hi\n", 0o600, "root", "adm"),
            RunScript(b"#!/bin/bash\necho $BASH_VERSION\n", "probe.sh"),
        ),
        epoch=1234,
        root="2",
        hosts=(("10.0.2.100", "mirror.example"),),
    )
    files = job_files(encode(job))
    assert files["epoch"] == b"1234"
    assert files["root"] == b"2"
    assert files["hosts"] == b"10.0.2.100 mirror.example\n"
    assert files["steps/001/kind"] == b"packages"
    assert files["steps/001/packages"] == b"hello\ncurl\n"
    assert files["steps/002/kind"] == b"file"
    assert files["steps/002/name"] == b"files /etc/motd"
    assert (files["steps/002/path"], files["steps/002/data"]) == (b"/etc/motd", b"hi\n")
    assert (files["steps/002/mode"], files["steps/002/group"]) == (b"0600", b"adm")
    assert files["steps/003/kind"] == b"run"
    assert files["steps/003/name"] == b"run probe.sh"
    assert files["steps/003/script"].startswith(b"#!/bin/bash\n")


def test_a_customising_job_grows_picks_names_by_distro_sysprepps_and_hands_back() -> None:
    """What a customised vm build asks of the appliance: the host reads nothing of
    the base, so the names for both distros, sysprep and the hand-back go along."""
    job = Job(
        (Packages(("curl",), ("curl", "ubuntu-only")), Sysprep(("logs", "machine-id"))),
        epoch=1, grow=True, export=("var/lib/dpkg/status", "boot"),
    )  # fmt: skip
    files = job_files(encode(job))
    assert files["grow"] == b"1\n" and files["export"] == b"var/lib/dpkg/status\nboot\n"
    assert files["steps/001/packages"] == b"curl\n"
    assert files["steps/001/packages-ubuntu"] == b"curl\nubuntu-only\n"
    assert files["steps/002/kind"] == b"sysprep"
    assert files["steps/002/operations"] == b"logs\nmachine-id\n"
    assert "grow" not in job_files(encode(Job((), epoch=1)))
    with pytest.raises(InvalidArgument, match="unknown operation"):
        encode(Job((Sysprep(("format-c",)),), epoch=1))
    for bad in ("/etc", "../x", "a/../../b"):
        with pytest.raises(InvalidArgument, match="not a path under the root"):
            encode(Job((), epoch=1, export=(bad,)))


def test_qemu_gets_the_hand_back_disk_only_when_the_job_asks() -> None:
    appliance = Appliance("k", Path("/a/root.ext4"), Path("/a/vmlinuz"), Path("/a/initrd"))
    accel = Accel("tcg", "test")
    argv = qemu_argv(appliance, Path("/w/d.raw"), Path("/w/j.tar"), Path("/w/c"), accel, [],
                     out=Path("/w/export.tar"))  # fmt: skip
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert drives[-1] == "file=/w/export.tar,format=raw,if=none,id=out,cache=unsafe,discard=unmap"
    assert "serial=kiln-out" in " ".join(argv)
    plain = qemu_argv(appliance, Path("/w/d.raw"), Path("/w/j.tar"), Path("/w/c"), accel, [])
    assert "serial=kiln-out" not in " ".join(plain)


def test_the_job_disk_is_whole_tar_records_and_the_same_bytes_each_time() -> None:
    job = Job((Packages(("hello",)),), epoch=1)
    assert encode(job) == encode(job)
    assert len(encode(job)) % 512 == 0


def test_no_root_hint_lets_the_appliance_find_the_root() -> None:
    assert "root" not in job_files(encode(Job((), epoch=1)))


@pytest.mark.parametrize(
    "step",
    [
        Packages(("hello; rm -rf /",)),
        WriteFile("etc/relative", b""),
        WriteFile("/etc/../../x", b""),
        WriteFile("/etc/x", b"", owner="root:0"),
    ],
)
def test_a_step_the_appliance_could_misread_is_refused(step: Packages | WriteFile) -> None:
    with pytest.raises(InvalidArgument):
        encode(Job((step,), epoch=1))


def feed(report: Report, text: str) -> list[str | None]:
    return [report.feed(line) for line in text.splitlines()]


def test_the_report_channel_gives_each_step_its_status_and_log() -> None:
    report = Report()
    said = feed(
        report,
        "KILN READY 6.1.0-50-amd64\r\n"
        "KILN ROOT /dev/vdb ext4\n"
        "KILN STEP 001 START packages\n"
        "KILN LOG 001 Setting up hello (2.10-3) ...\n"
        "KILN STEP 001 OK\n"
        "KILN STEP 002 START run probe.sh\n"
        "KILN LOG 002   indented output, kept as it is\n"
        "KILN STEP 002 OK\n"
        "KILN DONE OK\n",
    )
    assert report.ready == "6.1.0-50-amd64" and report.root == "/dev/vdb ext4"
    assert [(s.name, s.status) for s in report.steps] == [
        ("packages", "ok"),
        ("run probe.sh", "ok"),
    ]
    assert list(report.steps[1].tail) == ["  indented output, kept as it is"]
    assert report.done and report.ok and report.failed_step() is None
    assert "==> run probe.sh" in said and "Setting up hello (2.10-3) ..." in said


def test_a_failing_step_is_named_with_its_status_and_log_tail() -> None:
    report = Report()
    feed(
        report,
        "KILN STEP 001 START run broken.sh\n"
        + "".join(f"KILN LOG 001 line {n}\n" for n in range(30))
        + "KILN STEP 001 FAIL 3\n"
        "KILN DONE FAIL step run broken.sh failed\n",
    )
    failed = report.failed_step()
    assert failed is not None and failed.name == "run broken.sh"
    assert failed.exit_status == 3
    assert list(failed.tail)[-1] == "line 29" and len(failed.tail) == 20
    assert report.done and not report.ok


def test_noise_on_the_channel_is_ignored() -> None:
    report = Report()
    assert feed(report, "garbage\nKILN\nKILN LOG 009 for no step\n") == [None, None, "for no step"]
    assert report.steps == [] and not report.done


def test_a_step_that_never_ends_is_the_failed_one() -> None:
    report = Report()
    feed(report, "KILN STEP 001 START packages\n")
    assert report.failed_step() is not None and not report.done


MODULES_DEP = """\
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/virtio_pci.ko: kernel/virtio_ring.ko kernel/virtio.ko
kernel/virtio_blk.ko: kernel/virtio_ring.ko kernel/virtio.ko
kernel/virtio_ring.ko:
kernel/virtio.ko:
"""


def test_initramfs_modules_load_after_their_dependencies() -> None:
    order = [Path(p).stem for p in load_order(MODULES_DEP, ["virtio_pci", "virtio_blk", "ext4"])]
    assert order == ["virtio", "virtio_ring", "virtio_pci", "virtio_blk",
                     "jbd2", "mbcache", "crc16", "ext4"]  # fmt: skip


def test_a_module_the_kernel_lacks_is_named() -> None:
    with pytest.raises(FailedPrecondition, match="no module xfs"):
        load_order(MODULES_DEP, ["xfs"])


def test_the_initramfs_is_a_newc_archive_with_a_console_node() -> None:
    data = cpio([("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n")], devices=[("dev/console", 5, 1)])
    assert data.startswith(b"070701") and b"TRAILER!!!" in data and len(data) % 512 == 0
    entries = data.split(b"070701")[1:]
    console = next(e for e in entries if b"dev/console" in e)
    mode = int(console[8:16], 16)  # the second field: ino, then mode
    assert stat.S_ISCHR(mode)
    assert (int(console[72:80], 16), int(console[80:88], 16)) == (5, 1)  # rdev major, minor


def test_the_guest_reaches_only_the_mirrors_through_relays() -> None:
    found = relays(["http://mirror.example/debian", "http://mirror.example/debian-security",
                    "https://other.example:8443/x"])  # fmt: skip
    assert [(r.name, r.port, r.guest_address) for r in found] == [
        ("mirror.example", 80, "10.0.2.100"),
        ("other.example", 8443, "10.0.2.101"),
    ]
    netdev = netdev_args(found)[1]
    # restrict=on: nothing is routed, not even 10.0.2.2 (the host's loopback).
    assert netdev.startswith("user,id=net0,restrict=on,")
    assert "guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:mirror.example:80" in netdev
    assert "hostfwd" not in netdev


def test_a_mirror_that_is_not_http_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="only http and https"):
        relays(["ftp://mirror.example/debian"])


def test_host_mirrors_reads_both_source_styles(tmp_path: Path) -> None:
    (tmp_path / "a.list").write_text("deb [arch=amd64] http://one.example/debian bookworm main\n")
    (tmp_path / "b.sources").write_text("Types: deb\nURIs: http://two.example/debian\n")
    assert host_mirrors([tmp_path / "a.list", tmp_path / "b.sources"]) == [
        "http://one.example/debian",
        "http://two.example/debian",
    ]


def test_qemu_is_told_every_disk_format_and_the_appliance_root_is_read_only() -> None:
    appliance = Appliance("k", Path("/a/root.ext4"), Path("/a/vmlinuz"), Path("/a/initrd.img"))
    argv = qemu_argv(appliance, Path("/w/disk.raw"), Path("/w/job.tar"), Path("/w/c.log"),
                     Accel("tcg", "test"), [])  # fmt: skip
    drives = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive"]
    assert len(drives) == 3 and all("format=raw" in d for d in drives)
    assert "readonly=on" in drives[0] and "readonly=on" not in drives[1]
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert "chardev:report" in argv


def test_mke2fs_sizes_are_given_in_kib() -> None:
    assert kib(1024**3) == "1048576k" and kib(1025) == "2k"


def test_the_appliance_shares_the_default_bootstrap_layer() -> None:
    assert EPOCH == DEFAULT_EPOCH


def test_the_appliance_reaches_the_recipes_mirror_and_the_builders_default() -> None:
    from kiln_builder.isolation.appliance import recipe_mirrors
    from kiln_recipe.loader import parse_recipe

    recipe = parse_recipe(
        "name: m\nversion: '1'\n"
        "from: {bootstrap: {distro: debian, release: bookworm, mirror: 'http://own.example/debian'}}\n",
        Path("."),
    )
    found = recipe_mirrors(recipe, "http://default.example/debian")
    assert found[:2] == ["http://own.example/debian", "http://default.example/debian"]
    assert [r.name for r in relays(found)][:2] == ["own.example", "default.example"]


# --- the engine's routing -------------------------------------------------------------------

VM_RECIPE = """\
name: web
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
packages: [curl]
files: [{path: /etc/motd, content: hi}]
run: [{inline: "true"}]
sysprep: none
isolation: MODE
"""


@pytest.mark.parametrize(
    ("mode", "force_vm"), [("vm", False), ("sandbox", False), ("sandbox", True)]
)
async def test_in_vm_mode_every_edit_step_goes_to_the_appliance(
    mode: str, force_vm: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipe's isolation, or the operator's force_vm setting over it: in vm
    mode packages, files and run are one appliance boot, cached as run's layer
    (the key a sandbox build gives that layer too)."""
    from kiln_builder import customize
    from kiln_builder.engine import Bake, BakeOptions, StepRecord
    from kiln_builder.stages import in_appliance
    from kiln_recipe.loader import parse_recipe

    options = BakeOptions(out_dir=tmp_path / "out", work_root=tmp_path / "work",
                          cache_dir=tmp_path / "cache", build_id="b1",
                          force_vm=force_vm)  # fmt: skip
    bake = Bake(parse_recipe(VM_RECIPE.replace("MODE", mode), tmp_path), options)
    where: list[str] = []

    async def in_vm(bake: object, names: object) -> None:
        where.append(f"vm {' '.join(names)}")  # type: ignore[call-overload]

    async def on_host(*args: object, **kwargs: object) -> None:
        where.append("host")

    monkeypatch.setattr(in_appliance, "in_vm", in_vm)
    monkeypatch.setattr(customize, "install_packages", on_host)
    monkeypatch.setattr(customize, "run_script", on_host)
    monkeypatch.setattr(customize, "write_file", lambda *a, **k: where.append("host"))
    plan = [stage for stage in bake.layered() if stage.name not in ("bootstrap", "sysprep")]
    for stage in plan:
        await stage.run(bake, StepRecord(stage.name), contextlib.AsyncExitStack())
    in_vm_mode = mode == "vm" or force_vm
    expected = ["vm packages files run"] if in_vm_mode else ["host"] * 3
    assert where == expected
    if in_vm_mode:
        same = BakeOptions(tmp_path / "o", tmp_path / "w", tmp_path / "c", "b2")
        sandbox = Bake(parse_recipe(VM_RECIPE.replace("MODE", "sandbox"), tmp_path), same)
        last = next(s for s in sandbox.layered() if s.name == "run")
        assert [(p.name, p.layer, p.key) for p in plan] == [("appliance", "run", last.key)]


CUSTOMISED = """\
name: web
version: "1"
from:
  image: {url: "http://images.invalid/base.qcow2", sha256: "%s"}
packages: [curl]
files: [{path: /etc/motd, content: hi}]
run: [{inline: "true"}]
isolation: MODE
test: {boot: false}
""" % ("0" * 64)


@pytest.mark.parametrize("mode", ["vm", "sandbox"])
def test_a_customised_vm_build_runs_its_edit_steps_in_one_appliance_step(
    mode: str, tmp_path: Path
) -> None:
    """On a base image, vm mode boots the appliance once, with the base's own disk
    attached, for packages, files, run and sysprep (the host never mounts it)."""
    from kiln_builder.engine import Bake, BakeOptions
    from kiln_recipe.loader import parse_recipe

    options = BakeOptions(out_dir=tmp_path / "out", work_root=tmp_path / "work",
                          cache_dir=tmp_path / "cache", build_id="b1")  # fmt: skip
    plan = Bake(parse_recipe(CUSTOMISED.replace("MODE", mode), tmp_path), options).plan()
    edits = ["appliance"] if mode == "vm" else ["packages", "files", "run", "sysprep"]
    assert plan == ["base", *edits, "outputs"]
