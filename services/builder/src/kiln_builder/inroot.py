"""Host-side edits of an image's tree, made as if the tree were /.

The builder writes into an image it does not trust (a customised base, or a tree
a recipe script has just changed): sysprep, files, policy-rc.d, the boot test's
unit. Done with host paths, every symlink in the image would be followed on the
host: `var/log -> /etc` would let sysprep empty the host's /etc. So each such
edit runs in a forked child that first chroots into the tree: absolute and `..`
symlinks then resolve inside the image, as they would in the image itself, and
nothing outside it can be reached. The child runs only Kiln's own code (pure
file operations, no logging, no locks), returns its result through a pipe and
exits; the caller sees the result or the child's exception as if it ran here.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kiln_common.errors import FailedPrecondition

T = TypeVar("T")
IMAGE_ROOT = Path("/")  # what the tree is, seen from the child


def in_root(root: Path, fn: Callable[..., T], *args: Any) -> T:
    """fn(IMAGE_ROOT, *args), run chrooted into root."""
    if not root.is_dir():
        raise FailedPrecondition(f"the image's tree {root} is not a directory")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child(root, write_end, fn, args)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not payload:
        raise FailedPrecondition(f"editing the image's tree failed (wait status {status})")
    ok, value = pickle.loads(payload)
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _child(root: Path, write_end: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        os.chroot(root)
        os.chdir("/")
        payload = pickle.dumps((True, fn(IMAGE_ROOT, *args)))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        try:
            payload = pickle.dumps((False, exc))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            payload = pickle.dumps((False, FailedPrecondition(f"{type(exc).__name__}: {exc}")))
    try:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
    finally:
        os._exit(0)
