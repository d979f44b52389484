#!/usr/bin/env bash
# Kiln's main job on its embedded defaults, end to end: start the local stack
# (nats-server, storage, builder), submit the example recipe to the builder and
# follow it (bootstrap, packages, disk, boot test in a VM, upload), fetch the
# stored image's first KiB over its expiring HTTP URL with a Range request,
# download it whole and verify it, and stop the stack. Run after setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/.venv/bin:$PATH"
work=$(mktemp -d /var/tmp/kiln-demo.XXXXXX)
trap 'kiln down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

kiln up
kiln recipe check "$root/examples/web-debian.yaml"
kiln build "$root/examples/web-debian.yaml" --follow | tee "$work/artifacts"
id=$(awk '$2 == "image" {print $1}' "$work/artifacts")
sha256=$(awk '$2 == "image" {sub("sha256:", "", $5); print $5}' "$work/artifacts")
echo "stored image: $id"
kiln artifact ls --label build-id="$(kiln artifact show "$id" | awk '/build-id=/ {sub("build-id=", "", $2); print $2}')"
url=$(kiln artifact url "$id")
echo "url: $url"
code=$(curl -sS -r 0-1023 -o "$work/first-kib" -w '%{http_code}' "$url")
[ "$code" = 206 ]
[ "$(head -c 4 "$work/first-kib" | od -An -tx1 | tr -d ' ')" = 514649fb ]  # "QFI\xfb": qcow2
echo "curl -r 0-1023: HTTP $code, a qcow2 header"
kiln artifact get "$id" -o "$work/web-debian.qcow2"
echo "$sha256  $work/web-debian.qcow2" | sha256sum -c --quiet
cmp <(head -c 1024 "$work/web-debian.qcow2") "$work/first-kib"
echo "get: the whole image matches the build's SHA-256, and its first KiB the Range reply"
kiln down
echo "demo: OK"
