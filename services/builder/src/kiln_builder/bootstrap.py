"""The bootstrap layer: mmdebstrap into a tarball, keyed by everything that
decides its content (distro, release, arch, mirror, package set, epoch)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from kiln_builder import aptsources, layers
from kiln_common.errors import FailedPrecondition
from kiln_common.proc import run

BOOTSTRAP_VERSION = "kiln-bootstrap-2"  # bump when the recipe below changes
KERNELS = {"debian": "linux-image-amd64", "ubuntu": "linux-image-virtual"}
# What every image needs to boot and be prepared: kernel, init, udev, an
# initramfs compressed with zstd (built once), tools to grow the root on first boot.
BASE_PACKAGES = (
    "systemd-sysv", "udev", "initramfs-tools", "zstd", "e2fsprogs", "cloud-guest-utils",
    "apt", "ca-certificates", "iproute2", "kmod",
)  # fmt: skip
COMPONENTS = {"debian": "main", "ubuntu": "main,universe"}
# Set before the kernel is installed, so its initramfs is built once, with zstd.
ESSENTIAL_HOOK = (
    'mkdir -p "$1/etc/initramfs-tools/conf.d" && '
    'echo COMPRESS=zstd > "$1/etc/initramfs-tools/conf.d/kiln-compress"'
)
# mmdebstrap's own hook: dpkg runs under eatmydata (no fsync), which makes a
# bootstrap markedly faster; the hook removes itself, so the layer is the same.
EATMYDATA_HOOK = Path("/usr/share/mmdebstrap/hooks/eatmydata")


def _speed_hooks() -> list[str]:
    if EATMYDATA_HOOK.is_dir() and shutil.which("eatmydata"):
        return [f"--hook-dir={EATMYDATA_HOOK}"]
    return []


@dataclass(frozen=True)
class BootstrapSpec:
    distro: str
    release: str
    arch: str
    mirror: str
    packages: tuple[str, ...]
    source_date_epoch: int

    def key(self) -> str:
        canon = json.dumps({"v": BOOTSTRAP_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()


def layer_key(spec: BootstrapSpec, apt_state: tuple[tuple[str, str], ...] = ()) -> str:
    """The bootstrap layer's key: the spec's, chained with the state of the
    mirror's suite it bootstraps from (kiln_builder.fingerprint) when that was
    read, so that a mirror that moved on makes a new layer."""
    if not apt_state:
        return spec.key()
    return layers.chain_key(spec.key(), "apt", [list(part) for part in apt_state])


def host_mirror(archive: str, apt_dir: Path | None = None) -> str | None:
    """The build host's apt source for an archive (kiln_builder.aptsources)."""
    return aptsources.archive_uri(archive, apt_dir)


def resolve_mirror(distro: str, mirror: str | None, default: str = "") -> str:
    """The recipe's mirror, else the builder's default mirror setting, else the
    build host's apt source for the distro."""
    found = mirror or default or host_mirror(distro)
    if not found:
        raise FailedPrecondition(
            f"no {distro} mirror to bootstrap from: set `mirror:` under from.bootstrap in the"
            f" recipe, or give the builder an apt source for {distro} (or its"
            " KILN_BUILDER_DEFAULT_MIRROR setting)"
        )
    return found


def _kernel_hook(kernels: list[str]) -> list[str]:
    """The kernel is installed after everything else, in an apt run of its
    own: installed with initramfs-tools and udev in one run, its initramfs is
    built twice (the kernel's postinst, then initramfs-tools' trigger), about
    20 s each here; this way the trigger has fired before there is a kernel."""
    if not kernels:
        return []
    install = "apt-get install -y --no-install-recommends " + " ".join(kernels)
    return [f'--customize-hook=chroot "$1" {install}']


def spec_for(
    distro: str, release: str, arch: str, mirror: str | None, epoch: int, default_mirror: str = ""
) -> BootstrapSpec:
    packages = tuple(sorted({KERNELS[distro], *BASE_PACKAGES}))
    found = resolve_mirror(distro, mirror, default_mirror)
    return BootstrapSpec(distro, release, arch, found, packages, epoch)


async def bootstrap(
    spec: BootstrapSpec, dest: Path, proxy_env: dict[str, str] | None = None
) -> None:
    """mmdebstrap into dest (a .tar.zst: mmdebstrap compresses by the name),
    through a temporary name. proxy_env: http_proxy and https_proxy for apt,
    the build's egress proxy (which refuses the mirror if the policy does)."""
    tmp = dest.with_name("partial-" + dest.name)
    tmp.unlink(missing_ok=True)
    kernels = [p for p in spec.packages if p == KERNELS[spec.distro]]
    rest = [p for p in spec.packages if p not in kernels]
    try:
        await run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--format=tar",  # not guessed from the (temporary) file name
                f"--architectures={spec.arch}",
                f"--components={COMPONENTS[spec.distro]}",
                f"--include={','.join(rest)}",
                f"--essential-hook={ESSENTIAL_HOOK}",
                *_kernel_hook(kernels),  # before the speed hooks: it runs under eatmydata
                *_speed_hooks(),
                spec.release,
                tmp,
                spec.mirror,
            ],
            env={"SOURCE_DATE_EPOCH": str(spec.source_date_epoch), **(proxy_env or {})},
        )
        tmp.rename(dest)
    finally:
        tmp.unlink(missing_ok=True)
