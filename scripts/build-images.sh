#!/usr/bin/env bash
# Builds the service images kiln/storage, kiln/builder and kiln/publisher with podman,
# each tagged with its package's version, on Debian 12 as root. No registry is needed:
#   podman + runc (installed if missing) -> a local Debian base, made once with mmdebstrap
#   from this host's apt sources and imported as localhost/debian:bookworm -> the images.
# Usage: scripts/build-images.sh [storage|builder|publisher]...   (default: all three)
# The OCI labels come last in each Containerfile, so a new commit rebuilds no layer;
# SOURCE=URL names the source repository when git has no remote "origin".
# Podman's configuration is left alone; only where a container cannot start with it
# (crun, or rlimits conmon refuses) is a Kiln-local containers.conf used, through
# CONTAINERS_CONF, written under .cache/images/ (tests/images_support.py uses it too).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=.cache/images
base=localhost/debian:bookworm
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(storage builder publisher)
mkdir -p "$cache"

# catatonit: podman builds a pod's infra (pause) image with it (`podman kube play`,
# tests/e2e/test_kube_play.py); podman only recommends it.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null \
  || ! command -v catatonit >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "build-images: need root to install podman, runc, mmdebstrap, catatonit" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc mmdebstrap catatonit
fi

# The base: minbase bookworm with this host's apt sources (so builds reach the same mirror).
if ! podman image exists "$base"; then
  if [ ! -s "$cache/base-bookworm.tar" ]; then
    sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
      [ -s "$f" ] && sources+=("$f")
    done
    rm -f "$cache/base-bookworm.tar.part"  # an interrupted run's
    # No manuals, translations or docs (copyright files stay), now or in images' installs.
    mmdebstrap --variant=minbase --format=tar \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      bookworm "$cache/base-bookworm.tar.part" "${sources[@]}"
    mv "$cache/base-bookworm.tar.part" "$cache/base-bookworm.tar"
  fi
  podman import "$cache/base-bookworm.tar" "$base"
fi

# Does a container start with podman's own configuration? If not, use runc with bounded
# rlimits (crun fails on this kind of host; conmon refuses nproc above 32768).
[ -n "${CONTAINERS_CONF:-}" ] || rm -f "$cache/containers.conf"
if [ -z "${CONTAINERS_CONF:-}" ] && ! podman run --rm --network none "$base" true 2>/dev/null; then
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n\n[engine]\nruntime = "runc"\n' \
    >"$cache/containers.conf"
  export CONTAINERS_CONF=$root/$cache/containers.conf
  echo "build-images: podman's configuration cannot start a container here: using $CONTAINERS_CONF"
  podman run --rm --network none "$base" true
fi

# The OCI labels: the commit, and where the source lives (org.opencontainers.image.source):
# SOURCE if set, else the git remote "origin", else "unknown" (no repository URL is known).
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source=${SOURCE:-$(git remote get-url origin 2>/dev/null | sed "s#://[^/@]*@#://#" || true)}
source=${source:-unknown}  # never credentials a remote URL may carry

# Behind a TLS-inspecting proxy pip needs the proxy's CA: the one this host's pip uses.
cert=${PIP_CERT:-$(.venv/bin/pip config get global.cert 2>/dev/null || true)}
secret=()
[ -z "$cert" ] || [ ! -s "$cert" ] || secret=(--secret "id=pip-cert,src=$cert")

for name in "${services[@]}"; do
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "services/$name/pyproject.toml")
  start=$SECONDS
  # HEALTHCHECK is Docker-format: podman's default OCI format would drop it. The
  # changing labels also go as --label: podman 4.3's layer cache ignores build-arg
  # values, so the LABEL layer of an earlier commit would be reused with its revision.
  podman build --layers --format docker -f "services/$name/Containerfile" \
    --build-arg BASE="$base" --build-arg VERSION="$version" \
    --build-arg REVISION="$revision" --build-arg SOURCE="$source" "${secret[@]}" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.source="$source" \
    -t "kiln/$name:$version" .
  size=$(podman image inspect --format '{{.Size}}' "kiln/$name:$version")
  echo "build-images: kiln/$name:$version built in $((SECONDS - start))s, $((size / 1000000)) MB"
done
