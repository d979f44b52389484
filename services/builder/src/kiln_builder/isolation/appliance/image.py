"""The appliance itself: built by Kiln's own layers from recipe.yaml (the
shared bootstrap layer, then a packages layer keyed like any build's), then
assembled once into a read-only ext4 root beside its kernel and initrd, cached
under <cache>/appliance/<key> where the key covers the layer, the init script
and the assembly below."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kiln_builder import customize, layers
from kiln_builder.bootstrap import BootstrapSpec, bootstrap, spec_for
from kiln_builder.imageroot import ImageRoot
from kiln_builder.isolation.appliance import initramfs
from kiln_builder.pkgmap import map_packages
from kiln_common.errors import FailedPrecondition
from kiln_common.filelock import file_lock
from kiln_common.proc import run
from kiln_recipe.loader import load_recipe

log = logging.getLogger(__name__)

RECIPE = Path(__file__).with_name("recipe.yaml")
INIT = Path(__file__).with_name("init.sh")
INIT_PATH = "usr/local/sbin/kiln-appliance-init"
SYSPREP = Path(__file__).with_name("sysprep.sh")
SYSPREP_PATH = "usr/local/lib/kiln/sysprep.sh"  # where init.sh finds it
FINDROOT = Path(__file__).with_name("findroot.sh")
FINDROOT_PATH = "usr/local/lib/kiln/findroot.sh"  # init.sh sources it
ASSEMBLY = "kiln-appliance-assembly-2"  # bump when assemble() changes
# The engine's DEFAULT_EPOCH: the same bootstrap layer as every default build.
EPOCH = 1_700_000_000


@dataclass(frozen=True)
class Appliance:
    key: str
    root: Path  # raw ext4, attached read-only
    kernel: Path
    initrd: Path


def _plan() -> tuple[BootstrapSpec, list[str], str]:
    recipe = load_recipe(RECIPE)
    boot = recipe.from_.bootstrap
    assert boot is not None
    spec = spec_for(boot.distro, boot.release, boot.arch, boot.mirror, EPOCH)
    packages = map_packages(list(recipe.packages), boot.distro)
    return spec, packages, layers.chain_key(spec.key(), "packages", packages)


def appliance_key() -> str:
    _, _, packages_key = _plan()
    digest = hashlib.sha256()
    scripts = (INIT.read_text(), SYSPREP.read_text(), FINDROOT.read_text())
    parts = (ASSEMBLY, packages_key, *scripts, initramfs.INIT, *initramfs.MODULES)
    for part in parts:
        digest.update(hashlib.sha256(part.encode()).digest())
    return digest.hexdigest()[:16]


def _cached(final: Path, key: str) -> Appliance | None:
    found = Appliance(key, final / "root.ext4", final / "vmlinuz", final / "initrd.img")
    return found if all(p.is_file() for p in (found.root, found.kernel, found.initrd)) else None


async def ensure_appliance(cache_dir: Path, store: layers.LayerStore) -> Appliance:
    """The cached appliance, built first if need be (a few minutes, once)."""
    key = appliance_key()
    final = cache_dir / "appliance" / key
    if (found := _cached(final, key)) is not None:
        return found
    async with file_lock(final.with_name(f"{key}.lock")):
        if (found := _cached(final, key)) is not None:
            return found
        for stale in final.parent.glob(f".{key}-*"):  # a killed builder's half-assembly
            await asyncio.to_thread(shutil.rmtree, stale, ignore_errors=True)
        log.info("building the appliance %s (once per builder)", key)
        partial = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
        try:
            await _assemble(partial, store)
            partial.rename(final)
        finally:
            await asyncio.to_thread(shutil.rmtree, partial, ignore_errors=True)
    found = _cached(final, key)
    assert found is not None
    return found


async def _tree(tree: Path, store: layers.LayerStore) -> None:
    """The appliance's root tree from its packages layer, made if missing."""
    spec, packages, packages_key = _plan()
    layer = await store.fetch("packages", packages_key)
    if layer is not None:
        await layers.extract(layer, tree)
        return
    base = await store.fetch("bootstrap", spec.key())
    if base is None:
        await bootstrap(spec, store.path("bootstrap", spec.key()))
        await store.adopt("bootstrap", spec.key())
        base = store.path("bootstrap", spec.key())
    await layers.extract(base, tree)
    await customize.install_packages(tree, packages, EPOCH)
    await store.save("packages", packages_key, tree, EPOCH)


async def _assemble(out: Path, store: layers.LayerStore) -> None:
    tree = out / "tree"
    await _tree(tree, store)
    with ImageRoot(tree) as root:
        root.write(INIT_PATH, INIT.read_bytes(), 0o755)
        root.write(SYSPREP_PATH, SYSPREP.read_bytes(), 0o755)
        root.write(FINDROOT_PATH, FINDROOT.read_bytes(), 0o644)
    kernel = _one(tree / "boot", "vmlinuz-*")
    shutil.copy2(kernel, out / "vmlinuz")
    release = kernel.name.removeprefix("vmlinuz-")
    (out / "initrd.img").write_bytes(initramfs.build(tree, release, INIT_PATH))
    used = await tree_bytes(tree)
    await run(["mkfs.ext4", "-q", "-F", "-L", "kiln-appliance", "-d", tree,
               out / "root.ext4", kib(used + used // 4 + 64 * 1024**2)])  # fmt: skip
    await asyncio.to_thread(shutil.rmtree, tree)


def kib(size: int) -> str:
    """A size for mke2fs, which reads a bare number as blocks, not bytes."""
    return f"{-(-size // 1024)}k"


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise FailedPrecondition(f"the appliance needs one {pattern} in {directory}, found {found}")
    return found[0]


async def tree_bytes(tree: Path) -> int:
    """Bytes the tree takes on disk (hard links counted once)."""
    out = (await run(["du", "-s", "--block-size=1", tree], log_output=False)).stdout
    return int(out.split()[0])
