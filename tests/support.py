"""Helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from minio import Minio

from kiln_api.storage.v1 import storage_pb2_grpc
from kiln_common.devservers import Seaweed
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_common.proc import run_sync

REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def wait_until(
    what: str, check: Callable[[], T | bool | None], timeout: float, interval: float = 0.05
) -> T:
    """Calls check every interval seconds until it returns something truthy, and
    returns that. Raises AssertionError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return cast(T, found)
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def await_until(
    what: str,
    check: Callable[[], Awaitable[T | bool | None] | T | bool | None],
    timeout: float,  # noqa: ASYNC109 (a deadline for the polling, not for one call)
    interval: float = 0.05,
) -> T:
    """wait_until for async tests: check may be a coroutine function; the loop
    sleeps with asyncio.sleep, so other tasks run meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return cast(T, found)
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def s3_client(server: Seaweed) -> Minio:
    return Minio(
        server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
        region="us-east-1",
    )


def s3_settings(server: Seaweed, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "s3",
        "s3_endpoint": server.endpoint,
        "s3_access_key": server.access_key,
        "s3_secret_key": server.secret_key,
        "s3_bucket": bucket,
        **extra,
    }


@asynccontextmanager
async def storage_stub(address: str) -> AsyncIterator[storage_pb2_grpc.StorageStub]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        yield storage_pb2_grpc.StorageStub(channel)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking test bytes."""
    return random.Random(seed).randbytes(size)


async def gather_bytes(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


def loops_under(root: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip().startswith(str(root.resolve())):
            found.append(backing.parent.parent.name)
    return found


def mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(root.resolve()))]


def kiln_domains() -> list[str]:
    done = run_sync(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=False)
    return [n for n in done.stdout.split() if n.startswith("kiln-") and "test" not in n]


KILN = str(Path(sys.executable).parent / "kiln")


def kiln(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs the kiln command as a user would; never a traceback."""
    done = subprocess.run(
        [KILN, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    assert "Traceback" not in done.stderr
    return done
