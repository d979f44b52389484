"""bench/customise: the same customisation of the same base qcow2 (a 2 GiB Debian
bookworm image; install curl and htop, run one command) with virt-customize and
with Kiln in `sandbox` and `vm` isolation, in one run. Prints wall time, CPU and
peak memory of each and the ratios Kiln/virt-customize (goals: sandbox <= 0.2,
vm <= 0.8), and writes them to bench/results/customise.json. Every result is
opened read-only and checked for curl, htop and the command's file, so a failed
run never counts. Not a test: it asserts nothing and measures. Needs root. See
README.md.

  .venv/bin/python bench/customise/bench.py [--tools virt-customize,kiln-sandbox,kiln-vm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/proctree.py
import yaml
from proctree import ProcessTree

from kiln_builder import resources
from kiln_builder.base import formats, layout
from kiln_builder.bootstrap import host_mirror
from kiln_builder.vm.accel import host_accel
from kiln_common.errors import KilnError
from kiln_common.proc import ProcessError, run, run_sync
from kiln_recipe.issues import RecipeError
from kiln_recipe.loader import parse_recipe

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = REPO / ".cache/bench/customise"  # the base qcow2, made once (git-ignored)
KILN_CACHE = REPO / ".cache/kiln"  # Kiln's layers, downloaded bases and appliance
BASE = CACHE / "bookworm-2g.qcow2"
KILN_BUILDER = REPO / ".venv/bin/kiln-builder"
RESULTS = REPO / "bench/results/customise.json"
LOGS = REPO / "bench/results/customise-logs"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PACKAGES = ["curl", "htop"]
COMMAND = "echo customised > /etc/kiln-bench"
MARKER = ("/etc/kiln-bench", "customised\n")
TOOLS = ("virt-customize", "kiln-sandbox", "kiln-vm")
GOALS = {"kiln-sandbox": 0.2, "kiln-vm": 0.8}  # wall time / virt-customize's, issue 9
# virt-customize needs libguestfs-tools, and a host kernel for its appliance.
VIRT_PACKAGES = {"virt-customize": "libguestfs-tools", "/boot/vmlinuz-*": "linux-image-amd64"}
SAMPLE_SECONDS = 0.5
RUN_TIMEOUT = 1800.0
MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- measuring ------------------------------------------------------------------------------


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeSampler:
    """Every SAMPLE_SECONDS, the RSS of every process under this one: the peak of
    their sum (shared pages count once per process) and of the largest single one
    (QEMU's, in the VM runs). A process that left the tree with setsid is still
    followed through its session id."""

    def __init__(self) -> None:
        self.peak_sum = 0
        self.peak_largest = 0
        self._tree = ProcessTree()

    def sample(self) -> None:
        tree = self._tree.pids()
        sizes = [_rss(pid) for pid in tree]
        self.peak_sum = max(self.peak_sum, sum(sizes))
        self.peak_largest = max([self.peak_largest, *sizes])

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_SECONDS)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    tool: str
    ok: bool = False
    available: bool = True
    error: str | None = None
    warm_up_s: float | None = None  # Kiln: the unmeasured first bake (downloads the base)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user + system of the whole process tree (RUSAGE_CHILDREN delta)
    peak_rss_sum_mib: float = 0.0  # the peak of the RSS summed over the tree
    peak_rss_largest_mib: float = 0.0  # the peak RSS of the largest single process
    load_before: float = 0.0
    image_bytes: int = 0
    verified: str | None = None
    log: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


async def measure(
    entry: Run, argv: Sequence[str | os.PathLike[str]], env: Mapping[str, str], name: str
) -> str:
    """Runs one command under the sampler and fills entry's figures (error set if it
    failed); returns its output, also written to LOGS/name.log."""
    sampler = TreeSampler()
    entry.load_before = os.getloadavg()[0]
    cpu0, t0 = _children_cpu(), time.perf_counter()
    task = asyncio.create_task(sampler.run())
    output = ""
    try:
        result = await run(argv, env=env, check=False, terminate_timeout=60.0,
                           time_limit=RUN_TIMEOUT, log_output=False)  # fmt: skip
        output = result.stdout
        if result.returncode != 0:
            tail = "\n".join(output.rstrip().splitlines()[-20:])
            entry.error = f"exit status {result.returncode}:\n{tail}"
    except ProcessError as exc:  # the time limit
        entry.error = str(exc).splitlines()[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    entry.wall_s = time.perf_counter() - t0
    entry.cpu_s = _children_cpu() - cpu0
    entry.peak_rss_sum_mib = sampler.peak_sum / MiB
    entry.peak_rss_largest_mib = sampler.peak_largest / MiB
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    log.write_text(output)
    entry.log = str(log.relative_to(REPO))
    return output


# virt-customize stamps each phase with the seconds since it started: "[  45.9] Installing ..."
VIRT_STAMP = re.compile(r"^\[\s*([0-9.]+)\] (.*)$")
# kiln-builder ends each step with "  NAME done in 1.2s".
KILN_DONE = re.compile(r"^\s+(\S+) done in ([0-9.]+)s( \(cached[^)]*\))?$")


def virt_steps(output: str, wall: float) -> list[dict[str, Any]]:
    """Seconds in each of virt-customize's phases, from its time stamps."""
    marks = [(m[2], float(m[1])) for line in output.splitlines() if (m := VIRT_STAMP.match(line))]
    ends = [t for _, t in marks[1:]] + [wall]
    return [{"step": n, "seconds": round(e - t, 1)} for (n, t), e in zip(marks, ends, strict=True)]


def kiln_steps(output: str) -> list[dict[str, Any]]:
    return [
        {"step": m[1], "seconds": float(m[2]), "cached": bool(m[3])}
        for line in output.splitlines()
        if (m := KILN_DONE.match(line))
    ]


# --- checking a result ----------------------------------------------------------------------


def _installed(root: Path) -> set[str]:
    """Packages dpkg's status file marks "install ok installed"."""
    found, package = set(), ""
    for line in (root / "var/lib/dpkg/status").read_text(errors="replace").splitlines():
        if line.startswith("Package: "):
            package = line.split()[1]
        elif line == "Status: install ok installed":
            found.add(package)
    return found


async def verify(image: Path, scratch: Path) -> str:
    """Opens the qcow2 read-only (a raw copy, loop-mounted) and checks that curl and
    htop are installed and the command ran; returns what it found, or raises."""
    scratch.mkdir(parents=True)
    inspected = await asyncio.to_thread(formats.prepare, image, scratch, formats.MAX_VIRTUAL)
    raw = scratch / "disk.raw"
    await layout.working_copy(inspected, raw)
    async with layout.attached(raw, bare=inspected.bare) as held:  # once, as a build does
        found = await layout.find_layout(raw, inspected, held=held)
        async with layout.opened(held, found, scratch / "mnt", read_only=True) as root:
            missing = [p for p in PACKAGES if p not in _installed(root)]
            missing += [f"/usr/bin/{p}" for p in PACKAGES if not (root / "usr/bin" / p).is_file()]
            marker = root / MARKER[0].lstrip("/")
            if not marker.is_file() or marker.read_text() != MARKER[1]:
                missing.append(f"{MARKER[0]} holding {MARKER[1].strip()!r}")
    shutil.rmtree(scratch)
    if missing:
        raise RuntimeError(f"the result lacks {', '.join(missing)}")
    return f"{' and '.join(PACKAGES)} installed (dpkg), {MARKER[0]} written"


async def settle(entry: Run, image: Path, scratch: Path) -> None:
    if entry.error is not None:
        return
    if not image.is_file():
        entry.error = f"no image at {image}"
        return
    entry.image_bytes = image.stat().st_size
    try:
        entry.verified = await verify(image, scratch)
    except (KilnError, ProcessError, OSError, RuntimeError) as exc:
        entry.error = f"result check failed: {exc}"
        return
    entry.ok = True


# --- the base image -------------------------------------------------------------------------


def base_recipe(mirror: str) -> dict[str, Any]:
    return {
        "name": "bench-customise-base",
        "version": "1",
        "from": {"bootstrap": {"distro": "debian", "release": "bookworm", "mirror": mirror}},
        "disk": {"size": "2GiB"},
        "outputs": ["qcow2"],
        "test": {"boot": False},
    }


def ensure_base(temp: Path) -> str:
    """The base qcow2 made by Kiln once (its bootstrap layer cached under .cache/kiln);
    returns its SHA-256."""
    digest_file = BASE.with_suffix(".sha256")
    if BASE.is_file() and digest_file.is_file():
        return digest_file.read_text().strip()
    mirror = host_mirror("debian")
    if mirror is None:
        raise SystemExit("bench: the build host's apt sources name no Debian archive")
    print(f"making the base image {BASE.relative_to(REPO)} (once) ...", flush=True)
    recipe, out = temp / "base.yaml", temp / "base-out"
    recipe.write_text(yaml.safe_dump(base_recipe(mirror), sort_keys=False))
    argv: list[str | os.PathLike[str]] = [KILN_BUILDER, "bake", recipe, "--out", out]
    argv.append("--no-boot-test")
    argv += ["--cache-dir", KILN_CACHE, "--work-root", temp / "base-work"]
    try:
        run_sync(argv, env={"KILN_HOME": str(temp / "kiln-home")}, timeout=RUN_TIMEOUT)
    except ProcessError as exc:
        raise SystemExit(f"bench: could not make the base image: {exc}") from None
    made = sorted(out.glob("*.qcow2"))
    if not made:
        raise SystemExit(f"bench: the base bake wrote no qcow2 into {out}")
    CACHE.mkdir(parents=True, exist_ok=True)
    shutil.move(made[0], BASE)
    digest = _sha256(BASE)
    digest_file.write_text(digest + "\n")
    return digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    """An HTTP server on the loopback serving directory; yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- the tools ------------------------------------------------------------------------------


def missing_for_virt_customize() -> list[str]:
    """The Debian packages virt-customize needs and this host lacks."""
    missing = []
    if shutil.which("virt-customize", path=SYSTEM_PATH) is None:
        missing.append(VIRT_PACKAGES["virt-customize"])
    if not list(Path("/boot").glob("vmlinuz-*")):
        missing.append(VIRT_PACKAGES["/boot/vmlinuz-*"])
    return missing


def install_apt(packages: Sequence[str]) -> None:
    print(f"installing {', '.join(packages)} (for virt-customize) ...", flush=True)
    apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
    apt += ["-o", "DPkg::Lock::Timeout=300", *packages]
    try:
        run_sync(apt, env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=1800)
    except ProcessError as exc:
        tail = "\n".join(exc.output.splitlines()[-5:]) if exc.output else str(exc)
        raise SystemExit(
            f"bench: virt-customize needs {' '.join(packages)} and apt-get could not install"
            f" them:\n{tail}\ninstall them, or leave virt-customize out of --tools"
        ) from None


async def virt_env() -> dict[str, str]:
    """libguestfs's direct backend (no libvirtd), and TCG where KVM cannot run a
    guest (found by Kiln's own probe, with the host's kernel)."""
    accel = await host_accel(Path("/boot"), KILN_CACHE / "accel.json")
    env = {"LIBGUESTFS_BACKEND": "direct", "TMPDIR": "/var/tmp"}
    if accel.kind == "tcg":
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    return env


async def bench_virt_customize(entry: Run, temp: Path) -> None:
    image = temp / "virt-customize.qcow2"
    shutil.copyfile(BASE, image)  # virt-customize changes its disk in place
    argv: list[str | os.PathLike[str]] = ["virt-customize", "-a", image, "--network"]
    argv += ["--install", ",".join(PACKAGES)]
    argv += ["--run-command", COMMAND]
    output = await measure(entry, argv, await virt_env(), "virt-customize")
    entry.steps = virt_steps(output, entry.wall_s)
    await settle(entry, image, temp / "check-virt-customize")


def kiln_recipe(url: str, sha256: str, isolation: str) -> dict[str, Any]:
    return {
        "name": f"bench-customise-{isolation}",
        "version": "1",
        "from": {"image": {"url": url, "sha256": sha256}},
        "packages": PACKAGES,
        "run": [{"inline": COMMAND}],
        "outputs": ["qcow2"],
        "sysprep": "none",  # virt-customize does none
        "test": {"boot": False},
        "isolation": isolation,
    }


def without_isolation(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in recipe.items() if k != "isolation"}


def recipe_refusal(recipe: dict[str, Any]) -> str | None:
    """Why this branch's recipe schema refuses the recipe (None: it accepts it)."""
    try:
        parse_recipe(yaml.safe_dump(recipe), REPO)
    except RecipeError as exc:
        return str(exc)
    return None


async def bench_kiln(entry: Run, temp: Path, url: str, sha256: str, isolation: str) -> None:
    recipe = kiln_recipe(url, sha256, isolation)
    if (why := recipe_refusal(recipe)) is not None:
        if isolation != "sandbox" or recipe_refusal(without_isolation(recipe)) is not None:
            entry.available = False
            entry.error = (
                f"not available: the recipe schema refuses `isolation: {isolation}`: {why}"
            )
            return
        recipe = without_isolation(recipe)  # a branch before `isolation`: sandbox it is
    recipe_file = temp / f"{entry.tool}.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    # KILN_HOME: an empty one, so no `kiln up` storage service takes part.
    env = {"KILN_HOME": str(temp / "kiln-home"), "KILN_LOG_LEVEL": "INFO"}
    # The warm-up caches the downloaded base by its digest (and, for vm, the
    # appliance); the measured bake is the second one.
    for attempt in ("warm-up", "measured"):
        out = temp / f"{entry.tool}-{attempt}"
        argv: list[str | os.PathLike[str]] = [KILN_BUILDER, "bake", recipe_file]
        argv += ["--out", out, "--no-boot-test"]
        argv += ["--cache-dir", KILN_CACHE, "--work-root", temp / "kiln-work"]
        name = f"{entry.tool}-{attempt}"
        if attempt == "warm-up":
            warm = Run(entry.tool)
            await measure(warm, argv, env, name)
            if warm.error is not None:
                entry.error, entry.log = f"warm-up: {warm.error}", warm.log
                return
            entry.warm_up_s = warm.wall_s
            shutil.rmtree(out)
            continue
        output = await measure(entry, argv, env, name)
        entry.steps = kiln_steps(output)
        if isolation == "vm" and entry.error is None:
            entry.error = not_in_vm(recipe, output)
        images = sorted(out.glob("*.qcow2"))
        await settle(entry, images[0] if images else out / "none.qcow2", temp / f"check-{name}")


def not_in_vm(recipe: dict[str, Any], output: str) -> str | None:
    """In vm mode each step must say it ran in the appliance: a step that ran on
    the host instead would make the vm figures those of the sandbox. One boot
    runs them all ("packages and run and sysprep ran in the appliance ...")."""
    steps = [s for s in ("packages", "files", "run") if recipe.get(s)]
    said = [line.split(" ran in the appliance")[0].split() for line in output.splitlines()
            if " ran in the appliance" in line]  # fmt: skip
    missed = [s for s in steps if not any(s in words for words in said)]
    return (
        f"`isolation: vm`, but {', '.join(missed)} did not run in the appliance" if missed else None
    )


# --- the run --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def temp_root() -> AsyncIterator[Path]:
    """Work dirs, copies and outputs in one dir under /var/tmp, removed at the end with
    whatever is still mounted or attached under it."""
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-customise-", dir="/var/tmp"))
    try:
        yield root
    finally:
        released = await asyncio.shield(resources.reclaim(root))
        if released:
            print(f"bench: released {released}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


async def bench(tools: Sequence[str], runs: list[Run]) -> str:
    """Appends each tool's Run as it starts; returns the base's SHA-256."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with temp_root() as temp:
        sha256 = await asyncio.to_thread(ensure_base, temp)
        with served(BASE.parent) as server:
            url = f"{server}/{BASE.name}"
            for tool in tools:
                entry = Run(tool)
                runs.append(entry)
                print(f"--> {tool}", flush=True)
                if tool == "virt-customize":
                    if missing := missing_for_virt_customize():
                        entry.available = False
                        entry.error = f"not available: install {' '.join(missing)}"
                    else:
                        await bench_virt_customize(entry, temp)
                else:
                    await bench_kiln(entry, temp, url, sha256, tool.removeprefix("kiln-"))
                if entry.ok:
                    print(f"    {entry.wall_s:.1f} s; checked: {entry.verified}", flush=True)
                else:
                    print(f"    FAILED ({entry.log}): {entry.error}", flush=True)
        return sha256


def ratios(runs: list[Run]) -> dict[str, dict[str, float | None]]:
    by = {r.tool: r for r in runs}
    peer = by.get("virt-customize")
    table: dict[str, dict[str, float | None]] = {}
    for tool in ("kiln-sandbox", "kiln-vm"):
        kiln = by.get(tool)
        ok = peer is not None and kiln is not None and peer.ok and kiln.ok
        row: dict[str, float | None] = {}
        for what in ("wall_s", "cpu_s", "peak_rss_sum_mib", "peak_rss_largest_mib"):
            den = getattr(peer, what) if ok else 0
            row[what] = round(getattr(kiln, what) / den, 3) if ok and den else None
        table[tool] = row
    return table


def report(runs: list[Run], table: dict[str, dict[str, float | None]]) -> None:
    head = ("wall s", "CPU s", "RSS sum MiB", "RSS max MiB", "load", "image MiB")
    print(f"\n{'tool':>15}  " + "  ".join(f"{h:>11}" for h in head))
    for r in runs:
        if not r.ok:
            print(f"{r.tool:>15}  {(r.error or 'failed').splitlines()[0]}")
            continue
        values = (r.wall_s, r.cpu_s, r.peak_rss_sum_mib, r.peak_rss_largest_mib, r.load_before)
        cells = "  ".join(f"{v:>11.1f}" for v in (*values, r.image_bytes / MiB))
        print(f"{r.tool:>15}  {cells}")
    for r in runs:
        if r.ok and r.steps:
            parts = [f"{st['step']} {st['seconds']:.1f}" for st in r.steps]
            print(f"  {r.tool} steps (s): " + ", ".join(parts))
    print("\n/virt-customize      wall     CPU  RSS sum  RSS max   goal (wall)")
    for tool, row in table.items():
        cells = "  ".join(
            f"{v:>7.3f}" if v is not None else f"{'n/a':>7}"
            for v in (row["wall_s"], row["cpu_s"], row["peak_rss_sum_mib"])
        )
        largest = row["peak_rss_largest_mib"]
        cells += f"  {largest:>7.3f}" if largest is not None else f"  {'n/a':>7}"
        goal, wall = GOALS[tool], row["wall_s"]
        verdict = "not measured" if wall is None else ("met" if wall <= goal else "NOT met")
        print(f"{tool:<15}  {cells}   <= {goal}: {verdict}")


NOTES = [
    "Kiln: the second of two identical bakes is measured; the first (warm-up, its time in"
    " the JSON) downloads the base from the bench's HTTP server and caches it by digest"
    " (and, in vm mode, builds the appliance if it is not cached yet).",
    "virt-customize edits a copy of the base in place; Kiln converts the base to raw,"
    " works on it and writes a new qcow2. Neither runs a sysprep (Kiln: sysprep: none).",
    "virt-customize's supermin appliance is cached by libguestfs under /var/tmp/.guestfs-0"
    " after its first use; TCG when KVM cannot run a guest (LIBGUESTFS_BACKEND_SETTINGS="
    "force_tcg).",
    "CPU s: user+system of the whole process tree (RUSAGE_CHILDREN delta). RSS sum: the"
    " peak of the RSS summed over the tree (shared pages once per process); RSS max: the"
    " peak of the largest single process; both sampled every 0.5 s from /proc.",
    "Every result is opened read-only and checked (curl and htop installed per dpkg, the"
    " command's file written); a run whose image fails the check counts as failed.",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help=",".join(TOOLS) + " (default)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    tools = [t for t in args.tools.split(",") if t]
    if unknown := set(tools) - set(TOOLS):
        parser.error(f"unknown tools: {sorted(unknown)}")
    if os.geteuid() != 0:
        parser.error("needs root (loop devices, mounts)")
    if "virt-customize" in tools and (missing := missing_for_virt_customize()):
        install_apt(missing)  # as bench/build installs what diskimage-builder needs
    runs: list[Run] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    interrupted, sha256 = False, None
    try:
        sha256 = asyncio.run(bench(tools, runs))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        print("bench: interrupted", file=sys.stderr)
    table = ratios(runs)
    report(runs, table)
    print()
    for note in NOTES:
        print(f"note: {note}")
    commit = run_sync(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False)
    document = {
        "started": started,
        "interrupted": interrupted,
        "host": {"cpus": os.cpu_count()},
        "commit": commit.stdout.strip(),
        "base": {
            "path": str(BASE.relative_to(REPO)),
            "sha256": sha256,
            "recipe": base_recipe("HOST-MIRROR"),
        },
        "customisation": {"packages": PACKAGES, "command": COMMAND},
        "commands": {
            "virt-customize": "virt-customize -a COPY.qcow2 --network --install "
            f"{','.join(PACKAGES)} --run-command {COMMAND!r}",
            "kiln": "kiln-builder bake RECIPE --out OUT --no-boot-test --cache-dir .cache/kiln",
            "kiln_recipe": kiln_recipe("http://127.0.0.1:PORT/base.qcow2", "SHA256", "MODE"),
        },
        "goals_wall_over_virt_customize": GOALS,
        "runs": [asdict(r) for r in runs],
        "ratios_over_virt_customize": table,
        "notes": NOTES,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    if interrupted:
        return 130
    return 0 if runs and all(r.ok or not r.available for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
