#!/usr/bin/env bash
# Kiln's main job on its embedded defaults, end to end: start the local stack,
# build the example image (bootstrap, packages, disk, boot test in a VM), store
# it, fetch its first KiB over an expiring HTTP URL with a Range request,
# download it whole and verify it, delete it, stop the stack. Run after setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/.venv/bin:$PATH"
work=$(mktemp -d /var/tmp/kiln-demo.XXXXXX)
trap 'kiln down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

kiln up
kiln recipe check "$root/examples/web-debian.yaml"
kiln-builder bake "$root/examples/web-debian.yaml" --out "$work/out"
image="$work/out/web-debian-1.0.0.qcow2"

id=$(kiln artifact push "$image" --label name=web-debian --label version=1.0.0 --label format=qcow2)
echo "stored: $id"
kiln artifact ls --label name=web-debian
url=$(kiln artifact url "$id")
echo "url: $url"
code=$(curl -sS -r 0-1023 -o "$work/first-kib" -w '%{http_code}' "$url")
cmp <(head -c 1024 "$image") "$work/first-kib"
[ "$(head -c 4 "$work/first-kib" | od -An -tx1 | tr -d ' ')" = 514649fb ]  # "QFI\xfb": qcow2
echo "curl -r 0-1023: HTTP $code, a qcow2 header, first 1024 bytes match"
kiln artifact get "$id" -o "$work/copy.qcow2"
cmp "$image" "$work/copy.qcow2"
echo "get: whole image matches"
kiln artifact rm "$id"
kiln down
echo "demo: OK"
