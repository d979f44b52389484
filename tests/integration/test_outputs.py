"""Every output format, written by the real tools from a small real disk and root tree,
then read back by other real tools (qemu-img, e2fsck, debugfs, tar, the decompressors)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import await_until, payload

from kiln_builder import outputs
from kiln_builder.outputs import OutputFile, write_outputs
from kiln_common.errors import InvalidArgument
from kiln_common.proc import ProcessError, run_sync

pytestmark = [
    pytest.mark.integration,
    pytest.mark.build,
    pytest.mark.skipif(os.geteuid() != 0, reason="a root tree needs root (owners, device nodes)"),
]

EPOCH = 1_700_000_000
FS_UUID = "0b6f3a1e-3c2d-4f5a-9b1c-2d3e4f5a6b7c"
STEM = "web-debian-1.2.0"
MIB = 1 << 20
COMPRESSIONS = ("gz", "bz2", "xz", "zst")
DECOMPRESS = {
    "gz": ["gzip", "-d"],
    "bz2": ["bzip2", "-d"],
    "xz": ["xz", "-d"],
    "zst": ["zstd", "-d", "-q", "--rm"],
}


@dataclass(frozen=True)
class Spec:
    format: str
    compression: str | None = None

    @property
    def name(self) -> str:
        return self.format + (f".{self.compression}" if self.compression else "")


SPECS = [
    Spec("qcow2"),
    Spec("qcow2c"),
    Spec("vmdk"),
    Spec("raw"),
    *(Spec("raw", c) for c in COMPRESSIONS),
    Spec("ext4"),
    Spec("ext3"),
    Spec("ext3", "bz2"),
    Spec("tar"),
    *(Spec("tar", c) for c in COMPRESSIONS),
]
# Everything but qcow2c (written out of order) and vmdk (a random CID) is reproducible;
# rebuilding a sample of them keeps the test short (bzip2 adds seconds and no new risk).
REPRODUCIBLE = [
    Spec("qcow2"),
    Spec("raw", "xz"),
    Spec("raw", "gz"),
    Spec("ext3"),
    Spec("ext4"),
    Spec("tar"),
    Spec("tar", "gz"),
    Spec("tar", "zst"),
]


@dataclass(frozen=True)
class Inputs:
    root: Path
    disk: Path


@dataclass(frozen=True)
class Built:
    out_dir: Path
    files: dict[str, OutputFile]  # by spec name

    def path(self, spec_name: str) -> Path:
        return self.files[spec_name].path


def _make_root(root: Path) -> None:
    """A few files of every kind a real root holds; no OS needed."""
    for d in ("etc", "dev", "home/user", "usr/bin", "usr/sbin", "usr/share/doc", "srv/a"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("kiln-test\n")
    os.setxattr(root / "etc/hostname", "user.kiln", b"yes")
    (root / "etc/old").write_text("older than the epoch\n")
    os.utime(root / "etc/old", (EPOCH - 86400, EPOCH - 86400))
    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(70000))
    (root / "usr/share/doc/words.txt").write_text(text)  # ~4 MiB, compressible
    (root / "usr/bin/blob").write_bytes(payload(512 * 1024))
    (root / "usr/bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.link(root / "usr/bin/tool", root / "usr/sbin/tool-link")
    (root / "bin").symlink_to("usr/bin")
    (root / "home/user/notes").write_text("mine\n")
    os.chown(root / "home/user/notes", 1234, 5678)
    os.mknod(root / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for name in ("srv/a/x", "srv/a-b", "srv/b"):  # "/" sorts after "-": order matters
        (root / name).write_text(name + "\n")


def _make_disk(disk: Path, root: Path) -> None:
    """64 MiB, one GPT partition, ext4 from the tree written straight into its range."""
    with open(disk, "wb") as f:
        f.truncate(64 * MIB)
    table = disk.with_suffix(".sfdisk")
    table.write_text("label: gpt\nunit: sectors\nstart=2048, type=L\n")
    run_sync(["sh", "-c", 'sfdisk --quiet "$1" < "$2"', "sh", disk, table])
    layout = json.loads(run_sync(["sfdisk", "--json", disk]).stdout)["partitiontable"]
    part, sector = layout["partitions"][0], layout.get("sectorsize", 512)
    offset, size = part["start"] * sector, part["size"] * sector
    run_sync(
        ["mkfs.ext4", "-q", "-F", "-d", root, "-E", f"offset={offset}", disk, f"{size // 1024}k"]
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    base = tmp_path_factory.mktemp("inputs")
    _make_root(base / "root")
    _make_disk(base / "disk.raw", base / "root")
    return Inputs(base / "root", base / "disk.raw")


async def _write(inputs: Inputs, out_dir: Path, specs: list[Spec]) -> list[OutputFile]:
    return await write_outputs(
        disk=inputs.disk,
        rootfs=inputs.root,
        specs=specs,
        out_dir=out_dir,
        stem=STEM,
        source_date_epoch=EPOCH,
        fs_uuid=FS_UUID,
    )


@pytest.fixture(scope="module")
def built(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Built:
    out_dir = tmp_path_factory.mktemp("out")
    files = asyncio.run(_write(inputs, out_dir, SPECS))
    return Built(out_dir, {f.name.removeprefix(f"{STEM}."): f for f in files})


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def qemu_json(*argv: str | Path) -> Any:
    return json.loads(run_sync(["qemu-img", *argv, "--output=json"]).stdout)


def test_every_output_is_published_with_its_checksums(built: Built) -> None:
    names = sorted(p.name for p in built.out_dir.iterdir())
    assert names == sorted([f"{STEM}.{s.name}" for s in SPECS] + ["SHA256SUMS", "SHA512SUMS"])
    for spec in SPECS:
        file = built.files[spec.name]
        assert (file.format, file.compression) == (spec.format, spec.compression)
        data = file.path.read_bytes()
        assert file.size == len(data)
        assert file.sha256 == hashlib.sha256(data).hexdigest()
        assert file.sha512 == hashlib.sha512(data).hexdigest()
    for tool, sums in (("sha256sum", "SHA256SUMS"), ("sha512sum", "SHA512SUMS")):
        result = run_sync([tool, "--check", "--strict", sums], cwd=built.out_dir)
        assert result.stdout.count(": OK") == len(SPECS)
        listed = [
            line.split("  ", 1)[1] for line in (built.out_dir / sums).read_text().splitlines()
        ]
        assert listed == sorted(listed)


def test_qemu_formats_hold_the_disk(built: Built, inputs: Inputs) -> None:
    for name, fmt in (("qcow2", "qcow2"), ("qcow2c", "qcow2"), ("vmdk", "vmdk")):
        assert qemu_json("info", built.path(name))["format"] == fmt
        run_sync(["qemu-img", "compare", "-f", "raw", "-F", fmt, inputs.disk, built.path(name)])
    vmdk = qemu_json("info", built.path("vmdk"))["format-specific"]["data"]
    assert vmdk["create-type"] == "streamOptimized"


def test_qcow2c_is_zstd_compressed_and_smaller(built: Built) -> None:
    info = qemu_json("info", built.path("qcow2c"))["format-specific"]["data"]
    assert info["compression-type"] == "zstd"
    assert qemu_json("check", built.path("qcow2c"))["compressed-clusters"] > 0
    assert qemu_json("check", built.path("qcow2")).get("compressed-clusters", 0) == 0
    assert built.files["qcow2c"].size < built.files["qcow2"].size


def test_raw_is_a_sparse_copy_of_the_disk(built: Built, inputs: Inputs) -> None:
    raw = built.path("raw")
    assert sha256(raw) == sha256(inputs.disk)
    assert raw.stat().st_blocks * 512 < raw.stat().st_size


@pytest.mark.parametrize("fstype", ["ext3", "ext4"])
def test_filesystem_images_are_bare_and_complete(built: Built, fstype: str) -> None:
    image = built.path(fstype)
    run_sync(["e2fsck", "-fn", image])
    assert run_sync(["blkid", "-p", "-o", "value", "-s", "TYPE", image]).stdout.strip() == fstype
    assert "kiln-test\n" in run_sync(["debugfs", "-R", "cat /etc/hostname", image]).stdout
    header = run_sync(["dumpe2fs", "-h", image]).stdout
    assert f"Filesystem UUID:          {FS_UUID}" in header
    features = next(line for line in header.splitlines() if line.startswith("Filesystem features"))
    assert ("extent" in features) == (fstype == "ext4")
    notes = run_sync(["debugfs", "-R", "stat /home/user/notes", image]).stdout
    assert "User:  1234   Group:  5678" in notes
    assert "Type: character special" in run_sync(["debugfs", "-R", "stat /dev/null", image]).stdout


def _expected_order(root: Path) -> list[str]:
    """tar --sort=name: depth first, each directory's entries by byte order."""

    def walk(directory: Path, prefix: str) -> Iterator[str]:
        for name in sorted(os.listdir(directory)):
            path = directory / name
            yield prefix + name
            if path.is_dir() and not path.is_symlink():
                yield from walk(path, f"{prefix}{name}/")

    return [".", *walk(root, "./")]


def test_tar_is_sorted_numeric_clamped_with_xattrs(built: Built, inputs: Inputs) -> None:
    with tarfile.open(built.path("tar")) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert [m.name for m in tar.getmembers()] == _expected_order(inputs.root)
    notes = members["./home/user/notes"]
    assert (notes.uid, notes.gid, notes.uname, notes.gname) == (1234, 5678, "", "")
    assert all(m.mtime <= EPOCH for m in members.values())
    assert members["./etc/old"].mtime == EPOCH - 86400
    assert members["./etc/hostname"].mtime == EPOCH  # clamped: it was written just now
    assert members["./etc/hostname"].pax_headers["SCHILY.xattr.user.kiln"] == "yes"
    assert not any({"atime", "ctime"} & m.pax_headers.keys() for m in members.values())
    assert members["./dev/null"].ischr() and members["./dev/null"].devmajor == 1
    assert members["./usr/sbin/tool-link"].islnk()
    assert members["./bin"].issym() and members["./bin"].linkname == "usr/bin"


def _decompressed(path: Path, compression: str, workdir: Path) -> Path:
    probe = workdir / f"probe.{compression}"
    shutil.copyfile(path, probe)
    run_sync([*DECOMPRESS[compression], probe])
    return workdir / "probe"


def test_compressed_outputs_decompress_to_the_uncompressed_ones(
    built: Built, tmp_path: Path
) -> None:
    for spec in (s for s in SPECS if s.compression):
        assert spec.compression is not None
        plain = built.path(spec.format)
        restored = _decompressed(built.path(spec.name), spec.compression, tmp_path)
        assert sha256(restored) == sha256(plain), spec.name
        restored.unlink()
    gz = built.path("raw.gz").read_bytes()[:10]
    assert gz[3] & 0x08 == 0 and gz[4:8] == b"\0\0\0\0"  # no file name, no mtime


async def test_outputs_are_reproducible(built: Built, inputs: Inputs, tmp_path: Path) -> None:
    again = await _write(inputs, tmp_path / "again", REPRODUCIBLE)
    assert {f.name: f.sha256 for f in again} == {
        built.files[s.name].name: built.files[s.name].sha256 for s in REPRODUCIBLE
    }


def _processes_naming(path: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(path) in text:
            found.append(text)
    return found


@pytest.mark.parametrize("after", [1, 3], ids=["first-tool", "third-tool"])
async def test_a_cancelled_write_leaves_nothing(inputs: Inputs, tmp_path: Path, after: int) -> None:
    """Cancelled while the after-th output is being written: the tool is killed, and
    the temporary files of that output and of those already finished are removed."""
    out_dir = tmp_path / "out"
    specs = [Spec("raw", "xz"), Spec("qcow2c"), Spec("ext4"), Spec("tar", "bz2")]
    task = asyncio.create_task(_write(inputs, out_dir, specs))
    seen: set[str] = set()

    def started_enough() -> bool:
        if out_dir.is_dir():
            seen.update(p.name.split(".part")[0] for p in out_dir.iterdir())
        return len(seen) >= after

    # Generous: on a loaded host the third tool can take well over 10 s to start.
    await await_until(f"output {after} to be written", started_enough, 60, interval=0.005)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(out_dir.iterdir()) == []
    assert _processes_naming(out_dir) == []


async def test_a_failing_tool_leaves_nothing(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # raw and ext4 are staged before vmdk fails: they must go too.
    monkeypatch.setitem(outputs._QEMU_ARGS, "vmdk", ["-O", "vmdk", "-o", "subformat=bogus"])
    out_dir = tmp_path / "out"
    with pytest.raises(ProcessError, match="qemu-img"):
        await _write(inputs, out_dir, [Spec("raw"), Spec("ext4"), Spec("vmdk")])
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize(
    "specs",
    [[Spec("iso")], [Spec("raw", "lz4")], [Spec("raw"), Spec("raw")]],
    ids=["format", "compression", "duplicate"],
)
async def test_bad_specs_are_rejected_before_any_work(
    inputs: Inputs, tmp_path: Path, specs: list[Spec]
) -> None:
    with pytest.raises(InvalidArgument):
        await _write(inputs, tmp_path / "out", specs)
    assert not (tmp_path / "out").exists()
