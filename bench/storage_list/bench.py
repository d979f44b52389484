"""bench/storage_list: ListArtifacts over 100,000 artifacts, through the real
gRPC service, on the S3 backend (SeaweedFS `weed mini`) and the filesystem
backend. Prints p50/p95 per case (goal: p95 < 100 ms). Not a test: it
asserts only that each page is the right one, and measures.

  .venv/bin/python bench/storage_list/bench.py [--count 100000] [--repeat 50]
      [--backends s3,fs] [--baseline]

The artifacts are not uploaded one by one: one real artifact is uploaded
through gRPC, then the bench writes the other records, pointing at its blob,
and their index markers straight into the store, in the layout the core
writes (see README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from minio import Minio

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_common.events import NoEvents
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_common.ids import new_id
from kiln_devstack.devservers import Seaweed, free_port, start_seaweed, stopping, wait_grpc_health
from kiln_storage.backends import ObjectStore
from kiln_storage.backends.fs import FilesystemStore
from kiln_storage.backends.s3 import S3Store, make_http_client
from kiln_storage.core import StorageCore
from kiln_storage.index import READY_KEY, bounded, marker_keys
from kiln_storage.model import Artifact

PAGE = 50
SHARDS = 100  # shard=NN labels: each matches 1% of the artifacts
BUCKET = "kiln-bench"
ROOT = Path(__file__).resolve().parents[2]


def labels_for(n: int) -> dict[str, str]:
    return {"name": "bench", "shard": f"{n % SHARDS:02d}"}


def make_ids(count: int) -> list[str]:
    ids: set[str] = set()
    while len(ids) < count:
        ids.add(new_id())
    return sorted(ids)


def record_of(template: Artifact, artifact_id: str, n: int) -> bytes:
    artifact = replace(template, id=artifact_id, labels=labels_for(n))
    return json.dumps(artifact.to_record(), sort_keys=True).encode()


# ---- filling a store -------------------------------------------------------------


async def fill_store(store: ObjectStore, template: Artifact, ids: list[str]) -> None:
    """Records and markers through the backend's own put, many at once."""
    started = time.monotonic()
    step = 5000
    for first in range(0, len(ids), step):
        jobs: list[Awaitable[None]] = []
        for n in range(first, min(first + step, len(ids))):
            jobs.append(store.put(f"artifacts/{ids[n]}.json", record_of(template, ids[n], n)))
            jobs += [store.put(k, b"") for k in marker_keys(ids[n], labels_for(n))]
        await bounded(jobs, 64)
        done = min(first + step, len(ids))
        print(f"  {done} records written, {time.monotonic() - started:.0f} s", flush=True)


def fill_fs(root: Path, template: Artifact, ids: list[str]) -> None:
    """Plain files in the backend's layout (objects/<key>), without the fsync
    of every file the backend does: 400,000 fsyncs would take most of an hour
    here, and listing does not depend on them."""
    objects = root / "objects"
    started = time.monotonic()
    made: set[Path] = set()
    for n, artifact_id in enumerate(ids):
        files = {f"artifacts/{artifact_id}.json": record_of(template, artifact_id, n)}
        files |= {k: b"" for k in marker_keys(artifact_id, labels_for(n))}
        for key, data in files.items():
            path = objects / key
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            path.write_bytes(data)
        if (n + 1) % 20000 == 0:
            print(f"  {n + 1} records written, {time.monotonic() - started:.0f} s", flush=True)


# ---- the service -----------------------------------------------------------------


@contextmanager
def service(env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    address = f"127.0.0.1:{free_port()}"
    full = {
        "PATH": os.environ["PATH"],
        "KILN_STORAGE_GRPC_BIND": address,
        "KILN_STORAGE_HTTP_PORT": "0",
        "KILN_STORAGE_LOG_LEVEL": "WARNING",
        **env,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kiln_storage"], env=full, stdout=out, stderr=out
        )
    with stopping(proc.pid):
        wait_grpc_health(address, proc.pid, log)
        yield address, proc.pid


def upload_template(stub: pb_grpc.StorageStub) -> str:
    def requests() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=pb.UploadHeader(labels={"name": "template"}))
        yield pb.UploadRequest(chunk=b"the bytes every bench record points at\n")

    return str(stub.Upload(requests()).id)


def wait_ready(store: ObjectStore) -> None:
    """The service indexes an empty store at start; fill it only afterwards,
    so its rebuild does not race the filling."""
    deadline = time.monotonic() + 60
    while asyncio.run(store.size(READY_KEY)) is None:
        if time.monotonic() > deadline:
            raise SystemExit("the service never wrote index/ready")
        time.sleep(0.2)


# ---- measuring -------------------------------------------------------------------


Page = tuple[str, list[str]]  # a page token and the ids that page must hold


def page_after(ids: list[str], k: int) -> Page:
    """The page after ids[k]."""
    return ids[k], ids[k + 1 : k + 1 + PAGE]


def cases(ids: list[str], template_id: str) -> list[tuple[str, dict[str, str], list[Page]]]:
    """(name, selector, pages). One page: read once, then timed `repeat` times
    (after the first read its records are in the service's cache). Several
    pages: each read once, never read before (every record read from the
    store). The template artifact was made first: it heads the unfiltered list."""
    every = [template_id, *ids]
    shard = [i for n, i in enumerate(ids) if labels_for(n)["shard"] == "07"]
    middle, mid_shard = len(ids) // 2, len(shard) // 2
    pages = len(ids) // PAGE

    spacing = max(2, pages // 50)

    def cold(ids_: list[str], offset: int) -> list[Page]:
        # Disjoint page slots, different for each case (offset), so no case
        # warms another: slots offset + spacing*k, starting past the first page.
        slots = range(3 + offset, pages, spacing)
        return [page_after(ids_, j * PAGE - 1) for j in slots][:50]

    return [
        ("no selector, first page", {}, [("", every[:PAGE])]),
        ("no selector, middle page", {}, [page_after(ids, middle)]),
        ("no selector, 50 cold pages", {}, cold(ids, 0)),
        ("name=bench (all), first page", {"name": "bench"}, [("", ids[:PAGE])]),
        ("name=bench (all), middle page", {"name": "bench"}, [page_after(ids, middle)]),
        ("name=bench (all), 50 cold", {"name": "bench"}, cold(ids, spacing // 2)),
        ("shard=07 (1%), first page", {"shard": "07"}, [("", shard[:PAGE])]),
        ("shard=07 (1%), middle page", {"shard": "07"}, [page_after(shard, mid_shard)]),
        (
            "name=bench,shard=07, middle",
            {"name": "bench", "shard": "07"},
            [page_after(shard, mid_shard)],
        ),
        ("name=nothing (no match)", {"name": "nothing"}, [("", [])]),
    ]


def p95(samples: list[float]) -> float:
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def list_page(stub: pb_grpc.StorageStub, name: str, selector: dict[str, str], page: Page) -> float:
    """Milliseconds for one ListArtifacts call; checks it returned that page."""
    token, want = page
    request = pb.ListArtifactsRequest(label_selector=selector, page_size=PAGE, page_token=token)
    started = time.perf_counter()
    reply = stub.ListArtifacts(request)
    elapsed = (time.perf_counter() - started) * 1000
    got = [a.id for a in reply.artifacts]
    if got != want:
        raise SystemExit(f"{name}: wrong page ({len(got)} ids, expected {len(want)})")
    return elapsed


def time_cases(
    address: str, ids: list[str], template_id: str, repeat: int
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.StorageStub(channel)
        for name, selector, pages in cases(ids, template_id):
            if len(pages) == 1:
                first = list_page(stub, name, selector, pages[0])
                samples = [list_page(stub, name, selector, pages[0]) for _ in range(repeat)]
            else:
                samples = [list_page(stub, name, selector, page) for page in pages]
                first = samples[0]
            out[name] = {
                "first_ms": first,
                "p50_ms": statistics.median(samples),
                "p95_ms": p95(samples),
                "max_ms": max(samples),
                "samples": len(samples),
            }
            r = out[name]
            print(
                f"  {name:31} first {r['first_ms']:6.1f}  p50 {r['p50_ms']:6.1f}"
                f"  p95 {r['p95_ms']:6.1f}  max {r['max_ms']:6.1f} ms  (n={len(samples)})",
                flush=True,
            )
    return out


async def time_scan(store: ObjectStore) -> float:
    """The listing of before the index (reading records in turn), for the
    1% selector's first page: about 5,000 record reads."""
    core = StorageCore(store, NoEvents())
    started = time.perf_counter()
    page, _ = await core.index.scan({"shard": "07"}, PAGE, "")
    assert page, "the 1% selector matched nothing"
    return (time.perf_counter() - started) * 1000


# ---- per backend -----------------------------------------------------------------


def template_artifact(store: ObjectStore, template_id: str) -> Artifact:
    artifact = asyncio.run(StorageCore(store, NoEvents()).stat(template_id))
    return replace(artifact, created_at=datetime.now(UTC))


def run_backend(
    name: str,
    env: dict[str, str],
    store: ObjectStore,
    fill: Callable[[Artifact, list[str]], None],
    args: argparse.Namespace,
    base: Path,
) -> dict[str, Any]:
    print(f"{name}: {args.count} artifacts", flush=True)
    with service(env, base / f"storage-{name}.log") as (address, _):
        with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
            template_id = upload_template(pb_grpc.StorageStub(channel))
        wait_ready(store)
        template = template_artifact(store, template_id)
        ids = make_ids(args.count)
        started = time.monotonic()
        fill(template, ids)
        fill_seconds = time.monotonic() - started
        print(f"  filled in {fill_seconds:.0f} s", flush=True)
        results = time_cases(address, ids, template_id, args.repeat)
    report: dict[str, Any] = {"fill_seconds": fill_seconds, "cases": results}
    if args.baseline:
        report["scan_first_page_1pct_ms"] = asyncio.run(time_scan(store))
        print(
            f"  without the index (shard=07 first page): {report['scan_first_page_1pct_ms']:.0f} ms"
        )
    return report


def run_s3(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    access, secret = "kilnbench", secrets.token_hex(16)
    weed = start_seaweed(base / "weed", base / "weed.log", access, secret)
    with stopping(weed.pid):
        env = {
            "KILN_STORAGE_BACKEND": "s3",
            "KILN_STORAGE_S3_ENDPOINT": weed.endpoint,
            "KILN_STORAGE_S3_ACCESS_KEY": access,
            "KILN_STORAGE_S3_SECRET_KEY": secret,
            "KILN_STORAGE_S3_BUCKET": BUCKET,
        }
        store = s3_store(weed)

        def fill(template: Artifact, ids: list[str]) -> None:
            asyncio.run(with_threads(fill_store(store, template, ids)))

        return run_backend("s3", env, store, fill, args, base)


def s3_store(weed: Seaweed) -> S3Store:
    client = Minio(
        weed.endpoint,
        access_key=weed.access_key,
        secret_key=weed.secret_key,
        secure=False,
        region="us-east-1",
        http_client=make_http_client(3, 5.0, 64),
    )
    return S3Store(client, BUCKET)


async def with_threads(job: Awaitable[None]) -> None:
    """The MinIO SDK blocks: give the loop enough threads for 64 puts at once."""
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
    await job


def run_fs(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    root = base / "fs"
    env = {"KILN_STORAGE_BACKEND": "fs", "KILN_STORAGE_FS_ROOT": str(root)}
    root.mkdir()
    store = FilesystemStore(root)
    return run_backend("fs", env, store, lambda t, ids: fill_fs(root, t, ids), args, base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--backends", default="s3,fs")
    parser.add_argument("--baseline", action="store_true", help="also time the old scan once")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-list-", dir=os.environ.get("BENCH_DIR")))
    report: dict[str, Any] = {"count": args.count, "page_size": PAGE, "repeat": args.repeat}
    try:
        for backend in args.backends.split(","):
            report[backend] = {"s3": run_s3, "fs": run_fs}[backend](args, base)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "storage_list.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
