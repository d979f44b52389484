"""Seed 004 made real: Tycoon takes a bzip2-compressed ext3 filesystem image (no
partition table, no kernel). `kiln-builder bake` customises such an image in
the sandbox, writes ext3.bz2 and passes the `tycoon` profile; an image that
breaks a rule fails, naming it."""

from __future__ import annotations

import bz2
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from support import CACHE_MAX_GIB, REPO, ImageServer, loops_under, mounts_under, scratch

from kiln_builder.base import formats
from kiln_common.proc import run_sync

if TYPE_CHECKING:
    from conftest import TestRootfs

pytestmark = [pytest.mark.build]

BUILDER = str(Path(sys.executable).parent / "kiln-builder")
CACHE = REPO / ".cache/kiln"

TYCOON = """\
name: tycoon
version: "1"
from:
  image: {url: "URL", sha256: "DIGEST"}
isolation: sandbox
packages: [openssh-server]
files:
  - {path: /etc/hosts, content: "127.0.0.1 localhost\\n"}
  - {path: /etc/network/interfaces, content: "auto eth0\\niface eth0 inet dhcp\\n"}
run:
  - inline: "BREAK"
outputs: [ext3.bz2]
checks: [tycoon]
test: {boot: false}
"""


@pytest.fixture(scope="module")
def ext3_bz2(test_rootfs: TestRootfs, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A kernel-less ext3 image of a Debian tree, bzip2-compressed."""
    with scratch(request, "tycoon-base") as work:
        yield _tycoon_base(test_rootfs, work)


def _tycoon_base(test_rootfs: TestRootfs, work: Path) -> Path:
    tree, mnt = work / "tree", work / "mnt"
    mnt.mkdir()
    run_sync(["mount", "-o", "ro,noload", test_rootfs.image, mnt])
    try:
        run_sync(["cp", "-a", f"{mnt}/.", tree], timeout=300)
    finally:
        run_sync(["umount", mnt])
    for kernel_part in ("boot", "usr/lib/modules"):  # Tycoon images carry no kernel
        shutil.rmtree(tree / kernel_part)
        (tree / kernel_part).mkdir()
    image = work / "base.ext3"
    run_sync(["mkfs.ext3", "-q", "-d", tree, image, "1G"], timeout=300)
    shutil.rmtree(tree)
    run_sync(["bzip2", "-1", image], timeout=600)
    return work / "base.ext3.bz2"


def bake(
    tmp_path: Path, base: Path, url: str, *, breaks: str = "true"
) -> subprocess.CompletedProcess[str]:
    recipe = tmp_path / "recipe.yaml"
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    text = TYCOON.replace("URL", url).replace("DIGEST", digest).replace("BREAK", breaks)
    recipe.write_text(text)
    return subprocess.run(
        [BUILDER, "bake", str(recipe), "--out", str(tmp_path / "out"), "--cache-dir", str(CACHE),
         "--work-root", str(tmp_path / "work"), "--cache-max-gib", CACHE_MAX_GIB],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip


def test_a_bzip2_ext3_image_is_customised_and_passes_tycoon(ext3_bz2: Path, tmp_path: Path) -> None:
    with ImageServer(ext3_bz2.parent) as served:
        done = bake(tmp_path, ext3_bz2, f"{served.url}/{ext3_bz2.name}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert loops_under(tmp_path) == [] and mounts_under(tmp_path) == []
    report = json.loads((tmp_path / "out/tycoon-1.checks.json").read_text())
    assert report["passed"] is True
    rules = {r["rule"]: r["passed"] for r in report["results"]}
    assert len(rules) == 6 and all(rules.values()), rules
    output = tmp_path / "out/tycoon-1.ext3.bz2"
    assert formats.compression_of(output) == "bz2"
    with bz2.open(output) as packed:
        head = packed.read(4096)
    (tmp_path / "head").write_bytes(head)
    assert formats._bare_filesystem(tmp_path / "head") == "ext3"


def test_an_image_that_breaks_a_tycoon_rule_fails_naming_it(ext3_bz2: Path, tmp_path: Path) -> None:
    with ImageServer(ext3_bz2.parent) as served:
        done = bake(tmp_path, ext3_bz2, f"{served.url}/{ext3_bz2.name}", breaks="rm -r /home")
    assert done.returncode != 0
    assert "1 requirement check failed: tycoon.home (/home: does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert loops_under(tmp_path) == [] and mounts_under(tmp_path) == []
