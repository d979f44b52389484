"""Host-side edits of an image's tree, made as if the tree were /.

The builder writes into an image it does not trust (a customised base, or a tree
a recipe script has just changed): sysprep, files, policy-rc.d, the boot test's
unit. Done with host paths, every symlink in the image would be followed on the
host: `var/log -> /etc` would let sysprep empty the host's /etc. So each such
edit runs in a child process that first chroots into the tree: absolute and `..`
symlinks then resolve inside the image, as they would in the image itself, and
nothing outside it can be reached.

The child is a fresh Python (`python -m kiln_builder.inroot`), not a fork: the
builder service runs gRPC and NATS threads, and a forked child of it can crash.
It reads the function and its arguments (pickled, from a private temp file),
imports what it needs, chroots, runs the function (which gets IMAGE_ROOT as its
first argument) and writes back the result or the exception. Only Kiln's own
code runs in it.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kiln_common.errors import FailedPrecondition
from kiln_common.proc import run_sync

T = TypeVar("T")
IMAGE_ROOT = Path("/")  # what the tree is, seen from the child
TIMEOUT = 600.0  # seconds: these are small file edits


def in_root(root: Path, fn: Callable[..., T], *args: Any) -> T:
    """fn(IMAGE_ROOT, *args), run chrooted into root. fn must be a module-level
    function of Kiln's (it is pickled by name)."""
    if not root.is_dir():
        raise FailedPrecondition(f"the image's tree {root} is not a directory")
    with tempfile.TemporaryDirectory(prefix="kiln-inroot-") as scratch:
        request, response = Path(scratch) / "request", Path(scratch) / "response"
        request.write_bytes(pickle.dumps((fn, args)))
        argv: list[str | Path] = [
            sys.executable,
            "-m",
            "kiln_builder.inroot",
            root,
            request,
            response,
        ]
        done = run_sync(argv, check=False, timeout=TIMEOUT)
        if not response.is_file() or response.stat().st_size == 0:
            tail = " ".join(done.stdout.strip().splitlines()[-3:])
            raise FailedPrecondition(
                f"editing the image's tree failed (exit status {done.returncode}): {tail}"
            )
        ok, value = pickle.loads(response.read_bytes())
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _child(root: str, request: str, response: str) -> None:
    fn, args = pickle.loads(Path(request).read_bytes())  # imports fn's module first
    with open(response, "wb") as out:  # opened before the chroot hides it
        try:
            os.chroot(root)
            os.chdir("/")
            payload = pickle.dumps((True, fn(IMAGE_ROOT, *args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
            try:
                payload = pickle.dumps((False, exc))
            except Exception:  # noqa: BLE001 - an exception that does not pickle
                failure = FailedPrecondition(f"{type(exc).__name__}: {exc}")
                payload = pickle.dumps((False, failure))
        out.write(payload)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
