"""bench/list_builds: ListBuilds at 100,000 build records, through the real
Builder gRPC API on a real nats-server, with the index (each pod's view fed
by a watch on the records bucket) against the scan it replaced (list every
key of the bucket, read records until the page is full), in the same run.

Records are written straight into the bucket (the core's BuildRecords), as
SubmitBuild would write them, so setting up takes a minute, not hours of
queueing. Prints p50/p95 of the first page and of a page from the middle, with
and without a name filter, and the scan's figure for the same first page.
Not a test: it asserts nothing. Writes bench/results/list_builds.json.

  .venv/bin/python bench/list_builds/bench.py [--records 100000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import nats

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_builder.service.app import build
from kiln_builder.service.records import BuildRecords
from kiln_builder.service.settings import BuilderSettings
from kiln_common.builds import Build, BuildState
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_common.ids import new_id
from kiln_common.lifecycle import now
from kiln_devstack.devservers import start_nats, stopping

REPO = Path(__file__).resolve().parents[2]
NAMES = ["web", "db", "cache", "edge"]
STATES = [BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED]


async def fill(url: str, count: int) -> list[str]:
    """count records, oldest first; returns their ids in that order."""
    nc = await nats.connect(url)
    records = await BuildRecords.open(nc.jetstream())
    ids: list[str] = []
    for start in range(0, count, 1000):
        batch = []
        for n in range(start, min(count, start + 1000)):
            build = Build(id=new_id(), name=NAMES[n % 4], version="1",
                             state=STATES[n % 3], created=now())  # fmt: skip
            ids.append(build.id)
            batch.append(records.create(build))
        await asyncio.gather(*batch)
    await nc.close()
    return ids


async def timed(call, repeat: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}


async def run(args: argparse.Namespace) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-list-"))
    server = start_nats(base / "nats", base / "nats.log")
    with stopping(server.pid):
        started = time.perf_counter()
        ids = await fill(server.url, args.records)
        fill_s = time.perf_counter() - started
        settings = BuilderSettings(
            grpc_bind="127.0.0.1:0", nats_url=server.url, worker=False, log_level="WARNING",
            work_root=base / "work", cache_dir=base / "cache", outbox_dir=base / "outbox",
        )  # fmt: skip
        started = time.perf_counter()
        app = await build(settings)
        port = await app.grpc.start()
        results: dict[str, object] = {"records": args.records, "fill_s": round(fill_s, 1)}
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=CHANNEL_OPTIONS
            ) as ch:
                stub = pb_grpc.BuilderStub(ch)
                await stub.ListBuilds(pb.ListBuildsRequest(page_size=50))  # the index is built
                results["index_build_s"] = round(time.perf_counter() - started, 1)
                middle = ids[len(ids) // 2]
                cases = {
                    "first page": pb.ListBuildsRequest(page_size=50),
                    "middle page": pb.ListBuildsRequest(page_size=50, page_token=middle),
                    "first page, name filter": pb.ListBuildsRequest(page_size=50, name="db"),
                    "middle page, name filter": pb.ListBuildsRequest(
                        page_size=50, name="db", page_token=middle
                    ),
                }
                for label, request in cases.items():
                    results[label] = await timed(lambda r=request: stub.ListBuilds(r), args.repeat)
            # The scan the index replaced, on the same records (one run: it is slow).
            scan = await timed(lambda: app.core._scan(BuildState.UNSPECIFIED, "", 50, ""), 1)
            results["first page, scan (before the index)"] = scan
        finally:
            await app.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    results = asyncio.run(run(parser.parse_args()))
    print(f"ListBuilds at {results['records']} records (filled in {results['fill_s']} s, "
          f"index built in {results['index_build_s']} s)")  # fmt: skip
    for label, value in results.items():
        if isinstance(value, dict):
            print(f"  {label:<38} p50 {value['p50_ms']:8.1f} ms   p95 {value['p95_ms']:8.1f} ms")
    scan = results["first page, scan (before the index)"]
    index = results["first page"]
    assert isinstance(scan, dict) and isinstance(index, dict)
    print(f"  first page: index / scan = {index['p50_ms'] / scan['p50_ms']:.4f}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "list_builds.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
