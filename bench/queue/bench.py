"""bench/queue: the builder's queue and events, on a real `kiln up` stack
(nats-server, storage and builder processes). Trivial, fully cached builds
(the bootstrap layer, sysprep, a tar output, no boot test) so the figures are
about the service, not the engine:

- latency from SubmitBuild to the build.started event, over --builds builds
  submitted one after another (each once the previous has ended);
- event delivery latency: when an event arrives at a JetStream subscriber
  minus the time in its envelope, over every build.* event of those builds;
- builds per minute with one worker and with two, --burst builds submitted at
  once to each.

Not a test: it asserts nothing and measures. Writes bench/results/queue.json.

  .venv/bin/python bench/queue/bench.py [--builds 50] [--burst 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_client import credentials
from kiln_common.events import from_json
from kiln_common.proc import stop_pid
from kiln_devstack import stack as kiln_stack
from kiln_devstack.devservers import free_port

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench/results/queue.json"
RECIPE = """\
name: queue-bench
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [tar]
test: {boot: false}
"""
ENDED = {"build.succeeded", "build.failed", "build.cancelled"}
WAIT_SECONDS = 3600.0  # for builds to end


@dataclass
class Seen:
    """Events received, by build: (type, receive time, envelope time)."""

    by_build: dict[str, list[tuple[str, float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, raw: bytes) -> None:
        received = time.time()
        event = from_json(raw)
        sent = event.time.ToNanoseconds() / 1e9
        self.by_build[event.data["id"]].append((event.type, received, sent))
        self.changed.set()

    def first(self, build_id: str, kind: str) -> float | None:
        return next((t for k, t, _ in self.by_build[build_id] if k == kind), None)

    def ended(self, build_id: str) -> str | None:
        return next((k for k, _, _ in self.by_build[build_id] if k in ENDED), None)

    async def wait_ended(self, ids: list[str]) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while not all(self.ended(i) for i in ids):
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"builds did not end: {[i for i in ids if not self.ended(i)]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 5))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": pct(ms, 0.5), "p95_ms": pct(ms, 0.95), "max_ms": max(ms),
            "mean_ms": statistics.fmean(ms)}  # fmt: skip


async def submit(stub: pb_grpc.BuilderStub) -> tuple[str, float]:
    source = pb.RecipeSource(yaml=RECIPE, filename="queue-bench.yaml")
    at = time.time()
    build = await stub.SubmitBuild(pb.SubmitBuildRequest(recipe=source))
    return build.id, at


async def latency_phase(stub: pb_grpc.BuilderStub, seen: Seen, count: int) -> dict[str, Any]:
    to_started, delivery, took = [], [], []
    for n in range(count):
        build_id, at = await submit(stub)
        await seen.wait_ended([build_id])
        started = seen.first(build_id, "build.started")
        assert started is not None and seen.ended(build_id) == "build.succeeded", build_id
        to_started.append(started - at)
        delivery += [received - sent for _, received, sent in seen.by_build[build_id]]
        took.append(max(t for _, t, _ in seen.by_build[build_id]) - at)
        print(f"  build {n + 1}/{count}: started after {to_started[-1] * 1000:.0f} ms, "
              f"ended after {took[-1]:.1f} s", flush=True)  # fmt: skip
    return {"submit_to_started": summary(to_started), "event_delivery": summary(delivery),
            "build_seconds_mean": statistics.fmean(took)}  # fmt: skip


async def burst_phase(stub: pb_grpc.BuilderStub, seen: Seen, count: int) -> dict[str, Any]:
    start = time.time()
    ids = [(await submit(stub))[0] for _ in range(count)]
    await seen.wait_ended(ids)
    end = max(t for i in ids for k, t, _ in seen.by_build[i] if k in ENDED)
    ok = sum(seen.ended(i) == "build.succeeded" for i in ids)
    workers = {(await stub.GetBuild(pb.GetBuildRequest(id=i))).worker for i in ids}
    seconds = end - start
    return {"builds": count, "succeeded": ok, "seconds": seconds,
            "builds_per_minute": 60 * count / seconds, "workers_used": len(workers)}  # fmt: skip


async def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    stack = await asyncio.to_thread(kiln_stack.up, home)
    nc = await nats.connect(stack.nats_url)
    seen = Seen()

    async def on_event(msg: Any) -> None:
        seen.add(msg.data)

    sub = await nc.jetstream().subscribe("kiln.events.build.>", ordered_consumer=True, cb=on_event)
    extra: list[int] = []
    try:
        bearer = credentials.interceptors(stack.token())  # the stack requires identities
        async with grpc.aio.insecure_channel(stack.builder, interceptors=bearer) as channel:
            stub = pb_grpc.BuilderStub(channel)
            print("warming the cache (one build)", flush=True)
            build_id, _ = await submit(stub)
            await seen.wait_ended([build_id])
            print(f"latency: {args.builds} builds, one after another", flush=True)
            latency = await latency_phase(stub, seen, args.builds)
            print(f"throughput: {args.burst} builds at once, one worker", flush=True)
            one = await burst_phase(stub, seen, args.burst)
            second = {"KILN_BUILDER_WORKER_NAME": "second"}
            address = f"127.0.0.1:{free_port()}"
            log = home / "logs/second.log"
            pid = await asyncio.to_thread(kiln_stack.start_builder, stack, address, log, second)
            extra.append(pid)
            print(f"throughput: {args.burst} builds at once, two workers", flush=True)
            two = await burst_phase(stub, seen, args.burst)
    finally:
        await sub.unsubscribe()
        await nc.close()
        for pid in extra:
            stop_pid(pid)
        kiln_stack.down(home)
    return {"latency": latency, "one_worker": one, "two_workers": two}


def report(result: dict[str, Any]) -> None:
    lat = result["latency"]
    print()
    for what in ("submit_to_started", "event_delivery"):
        s = lat[what]
        print(f"{what:<18} n={s['n']:<4} p50 {s['p50_ms']:8.1f} ms  p95 {s['p95_ms']:8.1f} ms  "
              f"max {s['max_ms']:8.1f} ms")  # fmt: skip
    print(f"trivial build, submit to end: {lat['build_seconds_mean']:.1f} s mean")
    for key, label in (("one_worker", "1 worker"), ("two_workers", "2 workers")):
        r = result[key]
        print(f"{label:<9} {r['builds']} builds in {r['seconds']:.1f} s: "
              f"{r['builds_per_minute']:.2f} builds/min "
              f"(workers used: {r['workers_used']})")  # fmt: skip
    ratio = result["two_workers"]["builds_per_minute"] / result["one_worker"]["builds_per_minute"]
    print(f"two workers / one worker: {ratio:.2f}x (cores here: {os.cpu_count()})")
    result["two_over_one"] = ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=50)
    parser.add_argument("--burst", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("KILN_CACHE", str(REPO / ".cache"))  # the tests' bootstrap layer
    with tempfile.TemporaryDirectory(prefix="kiln-bench-queue-") as tmp:
        os.environ["KILN_HOME"] = tmp
        result = asyncio.run(run(args, Path(tmp)))
    report(result)
    result["host"] = {"cpus": os.cpu_count()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
