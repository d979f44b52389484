"""bench/isolation: what issue 16's hardening costs, against the builder as it
was before it (BEFORE, checked out once as a git worktree under .cache), in one
run on the same machine and layer cache:

1. the safe path: the same bake (a run step that changes each time, so it and
   sysprep are redone while the bootstrap layer is reused; files, checks, a raw
   and a tar output; no boot test) with the earlier builder and this one,
   alternated ROUNDS times. Prints each median and the ratio now/before
   (goal: <= 1.03).
2. the example recipe (examples/web-debian.yaml, boot test included) from
   scratch (--no-cache) in sandbox and vm isolation, before and after.

Not a test: it asserts nothing and measures. Needs root. Results go to
bench/results/isolation.json.

  .venv/bin/python bench/isolation/bench.py [--rounds 3] [--skip-example]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BEFORE = "091594d"  # the last commit before issue 16 (imageroot, egress, userns, vm hand-back)
WORKTREE = REPO / ".cache/bench/isolation-before"
CACHE = REPO / ".cache/kiln"
RESULTS = REPO / "bench/results/isolation.json"

SAFE_PATH = """\
name: safe-path
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
files:
  - {path: /etc/motd, content: "bench\\n"}
run:
  - inline: "echo NONCE > /etc/kiln-bench; for i in $(seq 200); do echo $i > /var/log/b$i.log; done"
checks: [{profile: tycoon, advisory: true}, {profile: cloud, advisory: true}]
disk: {size: 2GiB, filesystem: ext4, partitioning: gpt}
outputs: [raw, tar]
"""


def worktree() -> Path:
    """The builder as it was, with a virtualenv of its own (its scripts/setup.sh:
    its child processes, as `python -m kiln_builder.inroot`, must import it)."""
    if not (WORKTREE / ".git").exists():
        WORKTREE.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", WORKTREE, BEFORE],
                       check=True, capture_output=True)  # fmt: skip
    if not (WORKTREE / ".venv/bin/kiln-builder").exists():
        subprocess.run([WORKTREE / "scripts/setup.sh"], check=True, capture_output=True)
    return WORKTREE


def python_for(version: str) -> str:
    return str(worktree() / ".venv/bin/python") if version == "before" else sys.executable


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "KILN_HOME": str(home), "KILN_STORAGE": ""}


def bake(version: str, recipe: Path, out: Path, *extra: str) -> float:
    """Seconds one `kiln-builder bake` took; raises if it failed."""
    work = out.parent / "work"
    argv = [python_for(version), "-m", "kiln_builder", "bake", str(recipe), "--out", str(out),
            "--cache-dir", str(CACHE), "--work-root", str(work), *extra]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(argv, env=env_for(out.parent / "home"), capture_output=True,
                          text=True, check=False)  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{version}: the bake failed:\n{done.stderr[-3000:]}")
    return seconds


def safe_path(rounds: int, scratch: Path) -> dict[str, object]:
    times: dict[str, list[float]] = {"before": [], "now": []}
    for number in range(rounds):
        for version in ("before", "now") if number % 2 == 0 else ("now", "before"):
            where = scratch / f"safe-{version}-{number}"
            where.mkdir(parents=True)
            recipe = where / "recipe.yaml"
            recipe.write_text(SAFE_PATH.replace("NONCE", secrets.token_hex(8)))
            seconds = bake(version, recipe, where / "out", "--no-boot-test")
            times[version].append(round(seconds, 1))
            print(f"safe path, {version:6} round {number + 1}: {seconds:6.1f} s", flush=True)
            subprocess.run(["rm", "-rf", str(where)], check=False)
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    print(f"safe path: before {before:.1f} s, now {now:.1f} s (medians of {rounds}): "
          f"ratio {now / before:.3f} (goal <= 1.03)")  # fmt: skip
    return {"times": times, "median_before": before, "median_now": now, "ratio": now / before}


def example(scratch: Path) -> dict[str, object]:
    recipe = REPO / "examples/web-debian.yaml"
    found: dict[str, object] = {}
    for mode, extra in (("sandbox", ()), ("vm", ("--vm",))):
        for version in ("before", "now"):
            where = scratch / f"example-{mode}-{version}"
            where.mkdir(parents=True)
            seconds = bake(version, recipe, where / "out", "--no-cache", *extra)
            found[f"{mode}-{version}"] = round(seconds, 1)
            print(f"example recipe, {mode:7} {version:6}: {seconds:6.1f} s", flush=True)
            subprocess.run(["rm", "-rf", str(where)], check=False)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-example", action="store_true")
    args = parser.parse_args()
    scratch = REPO / ".cache/bench/isolation-scratch"
    subprocess.run(["rm", "-rf", str(scratch)], check=False)
    scratch.mkdir(parents=True)
    worktree()
    results: dict[str, object] = {"before": BEFORE, "safe_path": safe_path(args.rounds, scratch)}
    if not args.skip_example:
        results["example"] = example(scratch)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
