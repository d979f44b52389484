"""Fixtures for integration tests that boot real VMs: a small bootable Debian root
filesystem (built once with mmdebstrap and cached by its inputs under
.cache/test-images/), a libvirtd that answers, and Debian's headless Chromium."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from browser_support import headless_chromium
from support import REPO, scratch

from kiln_builder.bootstrap import bootstrap, spec_for
from kiln_builder.engine import DEFAULT_EPOCH
from kiln_builder.layers import LayerStore, extract
from kiln_common.proc import run_sync

if TYPE_CHECKING:
    from playwright.async_api import Browser

    from kiln_builder.vm import Accel

TEST_IMAGES = REPO / ".cache" / "test-images"

# The build engine's own bootstrap layer for bookworm, shared with the bake tests
# (one mmdebstrap per cache, not one per test module).
LAYERS = REPO / ".cache" / "kiln" / "layers"
BOOTSTRAP = spec_for("debian", "bookworm", "amd64", None, DEFAULT_EPOCH)
# Everything that decides the image's content. Any change here gives a new cache key,
# so the image is rebuilt; bump "layout" when the build steps below change.
ROOTFS_INPUTS: dict[str, object] = {"layout": 2, "bootstrap": BOOTSTRAP.key(), "size": "1G"}


@dataclass(frozen=True)
class TestRootfs:
    """A bare ext4 root filesystem (no partition table) and the kernel to boot it
    with directly: `root=/dev/vda console=ttyS0` reaches a getty on ttyS0."""

    image: Path
    kernel: Path
    initrd: Path


def rootfs_key(inputs: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock, so parallel test runs build the image once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern))
    if len(found) != 1:
        raise RuntimeError(f"expected one {pattern} in {root}, found {found}")
    return found[0]


async def _bootstrap_into(root: Path) -> None:
    store = LayerStore(LAYERS)
    layer = await store.fetch("bootstrap", BOOTSTRAP.key())
    if layer is None:
        layer = store.path("bootstrap", BOOTSTRAP.key())
        await bootstrap(BOOTSTRAP, layer)
        await store.adopt("bootstrap", BOOTSTRAP.key())
    await extract(layer, root)


def _build_rootfs(work: Path, inputs: dict[str, object]) -> None:
    """Unpacks the bootstrap layer (made first if missing) into work/root, then
    packs it into work/rootfs.ext4 beside the kernel and initrd. Runs as root:
    mkfs.ext4 -d keeps owners and device nodes."""
    root = work / "root"
    asyncio.run(_bootstrap_into(root))
    size = str(inputs["size"])
    shutil.copy2(_one("vmlinuz-*", root / "boot"), work / "vmlinuz")
    shutil.copy2(_one("initrd.img-*", root / "boot"), work / "initrd.img")
    run_sync(
        ["mkfs.ext4", "-q", "-F", "-L", "kiln-test", "-d", root, work / "rootfs.ext4", size],
        timeout=300,
    )
    shutil.rmtree(root)
    (work / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True) + "\n")


def cached_rootfs(
    cache: Path = TEST_IMAGES, inputs: dict[str, object] = ROOTFS_INPUTS
) -> TestRootfs:
    final = cache / f"rootfs-{rootfs_key(inputs)}"
    with locked(cache / f"{final.name}.lock"):
        if not final.is_dir():
            # Built beside its final name and renamed, so a killed build never looks whole.
            work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache))
            try:
                _build_rootfs(work, inputs)
                # libvirt runs QEMU as an unprivileged user: it must reach the files.
                os.chmod(work, 0o755)
                work.rename(final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return TestRootfs(final / "rootfs.ext4", final / "vmlinuz", final / "initrd.img")


@pytest.fixture(scope="session")
def test_rootfs() -> TestRootfs:
    return cached_rootfs()


@pytest.fixture(scope="session")
def accel(test_rootfs: TestRootfs) -> Accel:
    """This host's accelerator, probed with the test kernel; the verdict is cached
    across runs, as a builder caches it."""
    from kiln_builder.vm import probe_accel

    return asyncio.run(
        probe_accel(test_rootfs.kernel, test_rootfs.initrd, TEST_IMAGES / "accel.json")
    )


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """A libvirt URI that answers, starting virtlogd and libvirtd if none runs.
    The daemons are left running: they are shared, like the dev stack's."""
    from kiln_builder.libvirtd import ensure_libvirtd

    return ensure_libvirtd()


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    """Debian's headless Chromium under Playwright, stopped (every process of
    it) when the test ends, however it ends."""
    async with headless_chromium(tmp_path / "chromium") as browser:
        yield browser


@pytest.fixture(scope="module")
def image_root(test_rootfs: TestRootfs, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A writable copy of the cached root filesystem, loop-mounted (one per
    test module: the sandbox tests run apt and commands in it)."""
    with scratch(request, "sandbox") as work:
        image = work / "rootfs.ext4"
        run_sync(["cp", "--sparse=always", test_rootfs.image, image], timeout=120)
        root = work / "root"
        root.mkdir()
        run_sync(["mount", "-o", "loop", image, root])
        try:
            yield root
        finally:
            run_sync(["umount", root], check=False)
            image.unlink(missing_ok=True)  # 1 GiB, gone even if the loop lingers
