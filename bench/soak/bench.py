"""bench/soak: many small builds through a real `kiln up` stack with two
builders, while builders are killed (SIGKILL) and started again every
--kill-every seconds and nats-server is killed and restarted twice; then the
same builds without faults, in the same run, for comparison.

Builds are trivial and cached (the bootstrap layer, a tar output, no boot
test), so each takes seconds and the figures are about the service. Counted
at the end, from the durable record (the KILN_EVENTS stream read by
sequence, the build records, the stored artifacts, the host):
- builds that succeeded exactly once (goal: all);
- duplicate artifacts: a build with more than one artifact of a kind (goal 0);
- events lost or duplicated, per type: build.queued and the terminal event
  must appear once per build (goal 0 and 0);
- leaked loop devices, mounts and Kiln VMs (goal 0);
- p50/p95 from SubmitBuild to the build.started event, with and without faults.

Not a test: it asserts nothing. Writes bench/results/soak.json.

  .venv/bin/python bench/soak/bench.py [--builds 100] [--interval 6] [--kill-every 60]
      [--phases faults,no_faults]   (one phase at a time keeps the other's results)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats

from kiln_client import AsyncBuilderClient, AsyncStorageClient, credentials
from kiln_common.builds import Build, BuildState
from kiln_common.events import STREAM, from_json
from kiln_common.lifecycle import TERMINAL
from kiln_common.proc import stop_pid
from kiln_common.retry import RetryPolicy
from kiln_devstack import stack as kiln_stack
from kiln_devstack.devservers import free_port
from kiln_recipe.source import RecipeSource

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench/results/soak.json"
RECIPE = """\
name: soak-bench
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [tar]
test: {boot: false}
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


class Builders:
    """The stack's builder and a second one, each killed and started again
    on its own address."""

    def __init__(self, home: Path, stack: kiln_stack.Stack) -> None:
        self.home = home
        self.stack = stack
        self.second = f"127.0.0.1:{free_port()}"
        self.second_pid = 0

    def start_second(self) -> None:
        log = self.home / "logs/second.log"
        extra = {"KILN_BUILDER_WORKER_NAME": f"second-{time.time_ns()}"}
        self.second_pid = kiln_stack.start_builder(self.stack, self.second, log, extra)

    def kill(self, which: int) -> None:
        if which == 0:
            _kill(self.stack.pids["builder"])
            self.stack = kiln_stack.up(self.home)  # starts only the dead builder again
        else:
            _kill(self.second_pid)
            self.start_second()

    def restart_nats(self) -> None:
        _kill(self.stack.pids["nats"])
        time.sleep(1)
        self.stack = kiln_stack.up(self.home)  # the same port, the same data

    def stop(self) -> None:
        if self.second_pid:
            stop_pid(self.second_pid)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have died by itself
        os.kill(pid, signal.SIGKILL)


async def faults(
    builders: Builders, kill_every: float, nats_at: list[float], log: list[str]
) -> None:
    started = time.monotonic()
    which = 0
    next_kill = kill_every
    pending_nats = sorted(nats_at)
    while True:
        await asyncio.sleep(1)
        elapsed = time.monotonic() - started
        if pending_nats and elapsed >= pending_nats[0]:
            pending_nats.pop(0)
            log.append(f"{elapsed:.0f}s nats-server killed and restarted")
            await asyncio.to_thread(builders.restart_nats)
        if elapsed >= next_kill:
            next_kill += kill_every
            log.append(f"{elapsed:.0f}s builder {which} killed and restarted")
            await asyncio.to_thread(builders.kill, which)
            which = 1 - which


async def submit_all(client: AsyncBuilderClient, count: int, interval: float) -> dict[str, float]:
    """Submits count builds, one every interval seconds (with jitter); their
    ids and submit times."""
    submitted: dict[str, float] = {}
    source = RecipeSource(yaml=RECIPE, filename="soak.yaml")
    for n in range(count):
        at = time.time()
        build = await client.submit(source, skip_boot_test=True)
        submitted[build.id] = at
        print(f"  submitted {n + 1}/{count}", flush=True)
        await asyncio.sleep(interval * random.uniform(0.5, 1.5))
    return submitted


async def wait_ended(client: AsyncBuilderClient, ids: list[str], limit: float) -> None:
    deadline = time.monotonic() + limit
    left = set(ids)
    while left and time.monotonic() < deadline:
        for build_id in list(left):
            with contextlib.suppress(Exception):  # NATS may be restarting
                if (await client.get(build_id)).state in TERMINAL:
                    left.discard(build_id)
        await asyncio.sleep(2)


async def stored_events(url: str) -> list[Any]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        return [
            from_json((await js.get_msg(STREAM, seq)).data or b"")
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


async def artifact_kinds(storage: AsyncStorageClient, build_id: str) -> Counter[str]:
    """How many artifacts of each kind (image, sbom, build-log) the build has."""
    return Counter(
        [a.labels.get("kiln-kind", "") async for a in storage.list({"build-id": build_id})]
    )


def leaks(home: Path) -> dict[str, int]:
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts = Path("/proc/mounts").read_text()
    virsh = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--name"], capture_output=True, text=True
    )
    domains = [d for d in virsh.stdout.split() if d.startswith("kiln-")]
    return {
        "loops": sum(str(home) in line for line in loops.splitlines()),
        "mounts": sum(str(home) in line for line in mounts.splitlines()),
        "domains": len(domains),
    }


async def one_run(args: argparse.Namespace, home: Path, with_faults: bool) -> dict[str, Any]:
    stack = await asyncio.to_thread(kiln_stack.up, home)
    credentials.use_token(stack.token())  # the stack requires identities
    builders = Builders(home, stack)
    await asyncio.to_thread(builders.start_second)
    fault_log: list[str] = []
    chaos = None
    try:
        # Patient: the builder this client talks to is itself killed and restarted.
        patient = RetryPolicy(attempts=1000, initial=0.5, maximum=3.0, deadline=300.0)
        async with AsyncBuilderClient(stack.builder, policy=patient) as client:
            if with_faults:
                span = args.builds * args.interval
                nats_at = [span / 3, 2 * span / 3]
                chaos = asyncio.create_task(faults(builders, args.kill_every, nats_at, fault_log))
            submitted = await submit_all(client, args.builds, args.interval)
            await wait_ended(client, list(submitted), 3600)
            if chaos is not None:
                chaos.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await chaos
            records = {i: await client.get(i) for i in submitted}
        events = await stored_events(builders.stack.nats_url)
        async with AsyncStorageClient(builders.stack.storage) as storage:
            kinds = {
                i: Counter(
                    [a.labels.get("kiln-kind", "") async for a in storage.list({"build-id": i})]
                )
                for i in submitted
            }
    finally:
        if chaos is not None and not chaos.done():
            chaos.cancel()
        builders.stop()
        await asyncio.to_thread(kiln_stack.down, home)
    return summarise(submitted, records, events, kinds, leaks(home), fault_log)


def summarise(
    submitted: dict[str, float],
    records: dict[str, Build],
    events: list[Any],
    kinds: dict[str, Counter[str]],
    leaked: dict[str, int],
    fault_log: list[str],
) -> dict[str, Any]:
    per_build: dict[str, Counter[str]] = {i: Counter() for i in submitted}
    started_at: dict[str, float] = {}
    for event in events:
        build_id = event.subject
        if build_id not in per_build:
            continue
        per_build[build_id][event.type] += 1
        if event.type == "build.started" and build_id not in started_at:
            started_at[build_id] = event.time.ToNanoseconds() / 1e9
    once = ("build.queued",)
    lost = {t: sum(c[t] == 0 for c in per_build.values()) for t in once}
    duplicated = {t: sum(c[t] > 1 for c in per_build.values()) for t in once}
    ended = [sum(c[t] for t in ("build.succeeded", "build.failed", "build.cancelled"))
             for c in per_build.values()]  # fmt: skip
    lost["terminal"] = sum(n == 0 for n in ended)
    duplicated["terminal"] = sum(n > 1 for n in ended)
    succeeded_once = sum(
        records[i].state == BuildState.SUCCEEDED and per_build[i]["build.succeeded"] == 1
        for i in submitted
    )
    latency = [started_at[i] - at for i, at in submitted.items() if i in started_at]
    return {
        "builds": len(submitted),
        "succeeded_exactly_once": succeeded_once,
        "duplicate_artifacts": sum(n - 1 for k in kinds.values() for n in k.values() if n > 1),
        "events_lost": lost,
        "events_duplicated": duplicated,
        "attempts": dict(Counter(r.attempt for r in records.values())),
        "leaks": leaked,
        "submit_to_started_p50_ms": 1000 * pct(latency, 0.5),
        "submit_to_started_p95_ms": 1000 * pct(latency, 0.95),
        "faults": fault_log,
    }


def report(name: str, r: dict[str, Any]) -> None:
    print(f"\n{name}: {r['succeeded_exactly_once']}/{r['builds']} builds succeeded exactly once")
    print(f"  duplicate artifacts {r['duplicate_artifacts']}; events lost {r['events_lost']}; "
          f"duplicated {r['events_duplicated']}")  # fmt: skip
    print(f"  attempts per build {r['attempts']}; leaks {r['leaks']}")
    print(f"  submit to build.started: p50 {r['submit_to_started_p50_ms']:.0f} ms, "
          f"p95 {r['submit_to_started_p95_ms']:.0f} ms")  # fmt: skip
    for line in r["faults"]:
        print(f"  fault at {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builds", type=int, default=100)
    parser.add_argument("--interval", type=float, default=6.0, help="seconds between submits")
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--phases", default="faults,no_faults", help="which runs, in order")
    args = parser.parse_args()
    os.environ.setdefault("KILN_CACHE", str(REPO / ".cache"))  # the tests' bootstrap layer
    # A dead worker's build comes back after ack_wait: short, so the run is too.
    os.environ.setdefault("KILN_BUILDER_ACK_WAIT_SECONDS", "15")
    os.environ.setdefault("KILN_BUILDER_RETRY_BACKOFF_SECONDS", "[1, 2, 4]")
    os.environ.setdefault("KILN_BUILDER_MAX_DELIVER", "8")
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.phases.split(","):
        with_faults = name == "faults"
        home = Path(tempfile.mkdtemp(prefix=f"kiln-soak-{name}-"))  # kept: its logs
        os.environ["KILN_HOME"] = str(home)
        print(f"{name}: {args.builds} builds; logs in {home}/logs", flush=True)
        results[name] = asyncio.run(one_run(args, home, with_faults))
        report(name, results[name])
    if "faults" in results and "no_faults" in results:
        ratio = results["faults"]["submit_to_started_p50_ms"] / max(
            results["no_faults"]["submit_to_started_p50_ms"], 1e-9
        )
        print(f"\nsubmit-to-start p50, faults / no faults: {ratio:.2f}x")
        results["p50_ratio"] = ratio
    results["host"] = {"cpus": os.cpu_count()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
