#!/usr/bin/env bash
# Kiln's main job on its embedded defaults, end to end: start the local stack,
# store a file, list it, fetch its first KiB over an HTTP URL with a Range
# request, download it whole, delete it, stop the stack. Run after setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$root/.venv/bin:$PATH"
work=$(mktemp -d)
trap 'kiln down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

kiln up
head -c $((64 * 1024 * 1024)) /dev/urandom >"$work/demo.img"
id=$(kiln artifact push "$work/demo.img" --label name=demo --label version=1.0)
echo "pushed: $id"
kiln artifact ls --label name=demo
url=$(kiln artifact url "$id")
echo "url: $url"
code=$(curl -sS -r 0-1023 -o "$work/first-kib" -w '%{http_code}' "$url")
cmp <(head -c 1024 "$work/demo.img") "$work/first-kib"
echo "curl -r 0-1023: HTTP $code, first 1024 bytes match"
kiln artifact get "$id" -o "$work/copy.img"
cmp "$work/demo.img" "$work/copy.img"
echo "get: whole file matches"
kiln artifact rm "$id"
kiln down
echo "demo: OK"
