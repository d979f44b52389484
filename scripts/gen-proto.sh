#!/usr/bin/env bash
# Generates the Python stubs (with mypy type stubs) for every .proto under proto/
# into OUT (default: services/common/src). One place; `make proto` calls it and
# tests/unit/test_proto_fresh.py calls it into a temp dir to catch stale stubs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/services/common/src}
py=${PYTHON:-$root/.venv/bin/python}
# protoc finds the mypy plugins (protoc-gen-mypy) on PATH, beside the Python.
export PATH="$(dirname "$py"):$PATH"
cd "$root/proto"
mapfile -t protos < <(find kiln_api -name '*.proto' | LC_ALL=C sort)
"$py" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  "${protos[@]}"
# Regular packages (not namespace packages), so mypy and setuptools find them.
find kiln_api -type d | while read -r d; do
  : >"$out/$d/__init__.py"
done
