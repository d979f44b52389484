#!/usr/bin/env bash
# Set-up on a clean Debian 12 machine, as root (idempotent; quick when done):
#   apt packages -> .venv at the repository root -> pinned pip dependencies
#   -> the workspace packages (editable), which put `kiln` on .venv/bin.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

apt_packages=(
  python3 python3-venv python3-dev gcc make curl git ca-certificates pkg-config
  # the builder: bootstrap, sandbox, disks, bootloader, conversion, compression
  mmdebstrap eatmydata bubblewrap slirp4netns nftables iproute2 fdisk gdisk e2fsprogs xfsprogs dosfstools grub-pc-bin grub2-common
  qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-dev zstd xz-utils bzip2
  # vm isolation: the relays to the package mirrors
  socat
  # the service images and their tests (testcontainers through podman's Docker API;
  # runc: crun fails on hosts like these, scripts/build-images.sh)
  podman runc
  # the tests' own signed apt repository (fingerprints, mirror changes)
  apt-utils gpg
  # the marketplace catalogue's browser test: Debian's chromium, driven by
  # Playwright (pip), whose bundled node needs libatomic1
  chromium libatomic1
)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
  echo "setup: Kiln needs Python 3.11 or newer ($python is older)" >&2
  exit 1
}
[ -x .venv/bin/python ] || "$python" -m venv .venv

# Reinstall only when the pins or the packages' metadata changed.
stamp=.venv/.kiln-setup
want=$(cat requirements/constraints.txt requirements/dev.in services/*/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check \
    -c requirements/constraints.txt -r requirements/dev.in
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
    -e services/common -e services/client -e services/recipe -e services/storage \
    -e services/market -e services/devstack -e services/cli -e services/builder -e services/publisher
  echo "$want" >"$stamp"
fi
echo "setup: ready (.venv/bin/kiln)"
