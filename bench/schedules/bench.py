"""bench/schedules: how soon a schedule's due time becomes a running build,
and what reading the inputs costs a run that turns out unchanged (issue 19's
figures). Not a test: it asserts nothing. Writes bench/results/schedules.json.

1. A `kiln up` stack of its own (its builder on the repo's layer cache) and a
   schedule firing every INTERVAL of a recipe whose build starts, then fails
   in its run step (so every firing builds: a failed build records no
   inputs). INTERVAL is longer than such a build, so the builder is idle at
   each due time: what is measured is the firing, not a queue. For each run:
   the build's `started` minus the due time (the tick's time, which the
   server stamps at the due time): p50 and p95.
2. The fingerprint of a from-scratch bookworm recipe read ROUNDS times as a
   run reads it (the recipe's digest, the mirror suite's InRelease through an
   egress proxy, the builder's version): p50 and p95.

  .venv/bin/python bench/schedules/bench.py [--runs 8] [--interval 30] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln_builder import fingerprint
from kiln_builder.egress import LOCAL, Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_recipe import parse_recipe

REPO = Path(__file__).resolve().parents[2]
KILN = REPO / ".venv/bin/kiln"
RESULTS = REPO / "bench/results/schedules.json"
RECIPE = """\
name: bench-schedule
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "exit 1"
outputs: [tar.zst]
test: {boot: false}
"""


def kiln(env: dict[str, str], *args: str, check: bool = True) -> str:
    done = subprocess.run([KILN, *args], env=env, capture_output=True, text=True, check=check)
    return done.stdout


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 3), "p95": round(p95, 3), "n": len(values)}


def due_to_start(runs: int, interval: int, home: Path) -> dict[str, Any]:
    import os

    env = {**os.environ, "KILN_HOME": str(home), "KILN_CACHE": str(REPO / ".cache"),
           "KILN_BUILDER_SCHEDULE_MIN_SECONDS": "1"}  # fmt: skip
    subprocess.run([KILN, "up"], env=env, capture_output=True, check=True)
    try:
        recipe = home / "recipe.yaml"
        recipe.write_text(RECIPE)
        schedule = kiln(env, "schedule", "add", str(recipe), "--every", f"{interval}s",
                        "--pause-after", "100").strip()  # fmt: skip
        deadline = time.monotonic() + runs * interval + 600
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = [r for r in json.loads(kiln(env, "schedule", "runs", schedule, "--json"))
                     if r.get("build_id")]  # fmt: skip
            if len(found) >= runs:
                break
            time.sleep(interval / 2)
        kiln(env, "schedule", "pause", schedule)
        latencies = []
        for run in found[:runs]:
            # `build show` exits 1 for a failed build: its record is on stdout all the same.
            build = json.loads(kiln(env, "build", "show", run["build_id"], "--json", check=False))
            if build.get("started"):
                latencies.append(when(build["started"]) - when(run["time"]))
        return {"interval_s": interval, **percentiles(latencies), "seconds": latencies}
    finally:
        subprocess.run([KILN, "down"], env=env, capture_output=True, check=False)


async def fingerprint_cost(rounds: int, where: Path) -> dict[str, Any]:
    (where / "recipe.yaml").write_text(RECIPE)
    recipe = parse_recipe(RECIPE, where)
    digest = recipe.digest()
    took = []
    async with EgressProxy(LOCAL) as proxy:
        inputs = fingerprint.Inputs(route=Route(LOCAL, proxy.url))
        for _ in range(rounds):
            started = time.perf_counter()
            await fingerprint.compute(recipe, digest, inputs)
            took.append(time.perf_counter() - started)
    return {**percentiles(took), "seconds": [round(t, 4) for t in took]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--interval", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-schedules-") as tmp:
        cost = asyncio.run(fingerprint_cost(args.rounds, Path(tmp)))
        print(f"fingerprint of an unchanged run: p50 {cost['p50'] * 1000:.0f} ms, "
              f"p95 {cost['p95'] * 1000:.0f} ms ({cost['n']} reads)")  # fmt: skip
        latency = due_to_start(args.runs, args.interval, Path(tmp) / "home")
        runs = f"{latency['n']} runs, every {args.interval} s"
        print(f"due time to build started: p50 {latency['p50']:.2f} s, "
              f"p95 {latency['p95']:.2f} s ({runs})")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"fingerprint": cost, "due_to_start": latency}, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
