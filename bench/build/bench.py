"""bench/build: the same image (Debian bookworm amd64, openssh-server, qcow2) built
with diskimage-builder and with Kiln in one run, cold (empty caches), warm (the
same recipe again) and warm with one more package (curl). Prints wall time, CPU,
peak memory and image size of every build and the ratios Kiln/dib (goal: cold
<= 0.5, warm + one package <= 0.25), and writes them to bench/results/build.json.
Not a test: it asserts nothing and measures. Needs root. See README.md.

  .venv/bin/python bench/build/bench.py [--tools dib,kiln] [--dib-bootstrap-cache]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/proctree.py
import yaml
from proctree import ProcessTree

from kiln_builder.bootstrap import host_mirror
from kiln_common.proc import ProcessError, run, run_sync

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECIPE = HERE / "recipe.yaml"
SHIMS = HERE / "dib-shims"  # sudo, kpartx, dmsetup stand-ins (README.md says why)
DIB_VENV = REPO / ".cache/bench/dib-venv"
DIB_REQUIREMENT = "diskimage-builder==3.43.0"
KILN_BUILDER = REPO / ".venv/bin/kiln-builder"
KILN = REPO / ".venv/bin/kiln"
RESULTS = REPO / "bench/results/build.json"
LOGS = REPO / "bench/results/build-logs"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DIB_HOST_PACKAGES = {"debootstrap": "debootstrap"}  # command -> Debian package, for dib only
HOST_TOOLS = ("mmdebstrap", "qemu-img", "sgdisk", "partx", "losetup", "mkfs.ext4", "chroot")

PACKAGES = ["openssh-server"]
# repeat: the same image once more. dib has no result cache (its repeat is a warm
# build); Kiln's goes through a `kiln up` stack, whose result cache answers it.
PHASES = {
    "cold": PACKAGES, "warm": PACKAGES, "warm+curl": [*PACKAGES, "curl"], "repeat": PACKAGES,
}  # fmt: skip
# Kiln/dib wall time: cold and warm+curl from issue 3, repeat from issue 19.
GOALS = {"cold": 0.5, "warm+curl": 0.25, "repeat": 0.02}
TOOLS = ("dib", "kiln")
SAMPLE_SECONDS = 0.5
RUN_TIMEOUT = 1800.0
MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Sample:
    rss: int = 0  # bytes, summed over the tree
    pss: int = 0
    largest: int = 0  # the largest single process's RSS
    tmpfs: int = 0  # bytes used in tmpfs mounts under the bench's temp dir
    procs: int = 0


def _memory(pid: int) -> tuple[int, int]:
    """RSS and PSS of a process, in bytes (0, 0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        pss = 0
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except (OSError, IndexError, ValueError):
        return 0, 0
    return rss, pss


def _mounts() -> list[tuple[str, str, str]]:
    """(source, mount point, fstype) of every mount, from /proc/self/mounts."""
    with open("/proc/self/mounts") as f:
        rows = [line.split() for line in f]
    return [(_unescape(r[0]), _unescape(r[1]), r[2]) for r in rows if len(r) >= 3]


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _under(path: str, root: Path) -> bool:
    real = os.path.realpath(root)
    return path == real or path.startswith(real + "/")


class TreeSampler:
    """Every SAMPLE_SECONDS: the RSS (and PSS) of every process under this one,
    summed, and the bytes held in tmpfs mounts under the temp root (dib builds in
    tmpfs: RAM that no process's RSS shows). A process that left the tree with
    setsid is still followed through its session id. Sums of RSS count shared
    pages once per process; PSS shares them out."""

    def __init__(self, temp_root: Path) -> None:
        self.temp_root = temp_root
        self.peak = Sample()
        self.peak_total = 0  # RSS + tmpfs at the same instant
        self._tree = ProcessTree()

    def sample(self) -> None:
        tree = self._tree.pids()
        now = Sample(procs=len(tree))
        for pid in tree:
            rss, pss = _memory(pid)
            now.rss += rss
            now.pss += pss
            now.largest = max(now.largest, rss)
        for _, point, fstype in _mounts():
            if fstype == "tmpfs" and _under(point, self.temp_root):
                with contextlib.suppress(OSError):
                    st = os.statvfs(point)
                    now.tmpfs += (st.f_blocks - st.f_bfree) * st.f_frsize
        for name in ("rss", "pss", "largest", "tmpfs", "procs"):
            setattr(self.peak, name, max(getattr(self.peak, name), getattr(now, name)))
        self.peak_total = max(self.peak_total, now.rss + now.tmpfs)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_SECONDS)


def _host_busy_seconds() -> float:
    """CPU seconds the whole host has spent busy since boot (all CPUs)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / TICK


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- one build ------------------------------------------------------------------------------


@dataclass
class Build:
    tool: str
    phase: str
    packages: list[str]
    ok: bool = False
    error: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU of the build's process tree (RUSAGE_CHILDREN delta)
    other_cpu_s: float = 0.0  # the host's other busy CPU meanwhile (kernel threads included)
    load_before: float = 0.0  # 1-minute load average when the build started
    peak_rss_mib: float = 0.0
    peak_pss_mib: float = 0.0
    peak_largest_process_mib: float = 0.0
    peak_tmpfs_mib: float = 0.0
    peak_rss_plus_tmpfs_mib: float = 0.0
    peak_processes: int = 0
    image: str | None = None
    image_bytes: int = 0
    image_virtual_bytes: int = 0
    log: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)


async def measure(
    build: Build,
    argv: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str],
    temp_root: Path,
) -> str:
    """Runs one build under the sampler; fills build's figures; returns its output."""
    sampler = TreeSampler(temp_root)
    build.load_before = os.getloadavg()[0]
    cpu0, busy0, t0 = _children_cpu(), _host_busy_seconds(), time.perf_counter()
    task = asyncio.create_task(sampler.run())
    try:
        result = await asyncio.wait_for(
            run(argv, env=env, check=False, terminate_timeout=60.0), RUN_TIMEOUT
        )
    except TimeoutError:
        build.error = f"timed out after {RUN_TIMEOUT:.0f} s"
        output = ""
    else:
        output = result.stdout
        if result.returncode != 0:
            tail = "\n".join(output.rstrip().splitlines()[-25:])
            build.error = f"exit status {result.returncode}:\n{tail}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    build.wall_s = time.perf_counter() - t0
    build.cpu_s = _children_cpu() - cpu0
    build.other_cpu_s = max(0.0, _host_busy_seconds() - busy0 - build.cpu_s)
    peak = sampler.peak
    build.peak_rss_mib = peak.rss / MiB
    build.peak_pss_mib = peak.pss / MiB
    build.peak_largest_process_mib = peak.largest / MiB
    build.peak_tmpfs_mib = peak.tmpfs / MiB
    build.peak_rss_plus_tmpfs_mib = sampler.peak_total / MiB
    build.peak_processes = peak.procs
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{build.tool}-{build.phase}.log"
    log.write_text(output)
    build.log = str(log.relative_to(REPO))
    return output


def record_image(build: Build, image: Path) -> None:
    if not image.is_file():
        build.error = build.error or f"no image at {image}"
        return
    try:
        info = json.loads(run_sync(["qemu-img", "info", "--output=json", image]).stdout)
    except (ProcessError, ValueError) as exc:
        build.error = build.error or f"qemu-img info: {exc}"
        return
    build.image = image.name
    build.image_bytes = image.stat().st_size
    build.image_virtual_bytes = int(info["virtual-size"])
    build.ok = build.error is None


class Dirs:
    """Everything a run writes, under one temp root: caches, work dirs, outputs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dib_cache = root / "dib-cache"  # DIB_IMAGE_CACHE
        self.dib_tmp = root / "dib-tmp"  # TMP_DIR: dib mounts its tmpfs here
        self.kiln_cache = root / "kiln-cache"
        self.kiln_work = root / "kiln-work"
        self.kiln_home = root / "kiln-home"  # empty: no `kiln up` stack, layers stay local
        self.out = root / "out"
        for d in (self.dib_cache, self.dib_tmp, self.kiln_cache, self.kiln_work, self.kiln_home):
            d.mkdir(parents=True)


@dataclass(frozen=True)
class Mirrors:
    """The build host's Debian archives (from its apt sources): both tools use
    them, and dib's default security archive may be unreachable from here."""

    debian: str
    security: str


def host_mirrors() -> Mirrors:
    debian, security = host_mirror("debian"), host_mirror("debian-security")
    if debian is None or security is None:
        raise SystemExit(
            "bench: the build host's apt sources name no Debian archive (a URL ending in"
            " /debian) and security archive (ending in /debian-security): add them"
        )
    return Mirrors(debian, security)


def dib_env(cache: Path, tmp: Path, bootstrap_cache: bool, mirrors: Mirrors) -> dict[str, str]:
    env = {
        "PATH": f"{SHIMS}:{DIB_VENV / 'bin'}:{SYSTEM_PATH}",
        "DIB_RELEASE": "bookworm",
        "DIB_DISTRIBUTION_MIRROR": mirrors.debian,
        "DIB_DEBIAN_SECURITY_MIRROR": mirrors.security,
        "DIB_IMAGE_CACHE": str(cache),
        "TMP_DIR": str(tmp),  # not TMPDIR: chroot scripts must not inherit it
    }
    if bootstrap_cache:  # dib's own opt-in: tar the bootstrap once, unpack it when warm
        env |= {"DIB_DEBOOTSTRAP_CACHE": "1", "DIB_DEBIAN_USE_DEBOOTSTRAP_CACHE": "1"}
    return env


# dib's log: "YYYY-MM-DD HH:MM:SS.mmm | text". A phase starts at its first marker.
DIB_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \| (.*)$")
DIB_HOOKS = "root|extra-data|pre-install|install|post-install|finalise|cleanup"
DIB_HOOK = re.compile(rf"dib-run-parts Running \S*/({DIB_HOOKS})\.d/")
DIB_PHASE_NAMES = {
    "root": "root.d (bootstrap)",
    "install": "install.d (packages, kernel, grub)",
    "post-install": "post-install.d, sizing, disk, copy-in",
    "cleanup": "cleanup.d, unmount",
}


def dib_phases(log: str) -> list[dict[str, Any]]:
    """Seconds in each of dib's phases, from the time stamps of its log."""
    marks: list[tuple[str, float]] = []
    for line in log.splitlines():
        m = DIB_STAMP.match(line)
        if not m:
            continue
        stamp = time.mktime(time.strptime(m[1][:19], "%Y-%m-%d %H:%M:%S")) + float(m[1][19:])
        text = m[2]
        name = None
        if not marks:
            name = "set-up"
        elif hook := DIB_HOOK.search(text):
            name = f"{hook[1]}.d"
            name = DIB_PHASE_NAMES.get(hook[1], name)
        elif text.startswith("Converting image using qemu-img convert"):
            name = "qemu-img convert (zlib)"
        elif text.startswith("Build completed successfully"):
            name = "end"
        if name and name not in (n for n, _ in marks):
            marks.append((name, stamp))
    return [
        {"step": name, "seconds": round(marks[i + 1][1] - stamp, 1)}
        for i, (name, stamp) in enumerate(marks[:-1])
    ]


async def build_dib(build: Build, dirs: Dirs, bootstrap_cache: bool, mirrors: Mirrors) -> None:
    shutil.rmtree(dirs.out, ignore_errors=True)
    dirs.out.mkdir()
    base = dirs.out / "bench-build"
    argv: list[str | os.PathLike[str]] = [DIB_VENV / "bin/disk-image-create", "vm"]
    argv.append("debian-minimal")
    argv += ["-p", ",".join(build.packages), "-t", "qcow2", "-o", base]
    env = dib_env(dirs.dib_cache, dirs.dib_tmp, bootstrap_cache, mirrors)
    build.steps = dib_phases(await measure(build, argv, env, dirs.root))
    record_image(build, base.with_suffix(".qcow2"))


STEP_DONE = re.compile(r"^\s+(\S+) done in ([0-9.]+)s( \(cached layer\))?$")


def kiln_recipe(build: Build, dirs: Dirs, mirrors: Mirrors) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["packages"] = build.packages
    recipe["from"]["bootstrap"]["mirror"] = mirrors.debian  # the one dib uses
    recipe_file = dirs.root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return recipe_file


async def build_kiln(build: Build, dirs: Dirs, mirrors: Mirrors) -> None:
    shutil.rmtree(dirs.out, ignore_errors=True)
    dirs.out.mkdir()
    recipe_file = kiln_recipe(build, dirs, mirrors)
    argv: list[str | os.PathLike[str]] = [KILN_BUILDER, "bake", recipe_file, "--out", dirs.out]
    argv.append("--no-boot-test")
    argv += ["--cache-dir", dirs.kiln_cache, "--work-root", dirs.kiln_work]
    # KILN_HOME: an empty one, so no `kiln up` storage service shares layers into the run.
    # INFO logging puts a time stamp on every command in the log.
    env = {"KILN_HOME": str(dirs.kiln_home), "KILN_LOG_LEVEL": "INFO"}
    output = await measure(build, argv, env, dirs.root)
    for line in output.splitlines():
        if m := STEP_DONE.match(line):
            build.steps.append({"step": m[1], "seconds": float(m[2]), "cached": bool(m[3])})
    images = sorted(dirs.out.glob("*.qcow2*"))
    record_image(build, images[0] if images else dirs.out / "bench-build-1.qcow2")


IMAGE_LINE = re.compile(r"^(\S+)\s+image\s+(\S+)\s+(\d+)\s+sha256:", re.M)


async def build_kiln_repeat(build: Build, dirs: Dirs, mirrors: Mirrors) -> None:
    """`kiln build RECIPE --follow` twice through a `kiln up` stack of the
    run's own (its builder on the bake's layer cache): the first makes the
    image, the second, measured, is the repeat the result cache answers."""
    recipe_file = kiln_recipe(build, dirs, mirrors)
    env = {
        "KILN_HOME": str(dirs.root / "stack-home"), "KILN_CACHE": str(dirs.root / "stack-cache"),
        "KILN_BUILDER_CACHE_DIR": str(dirs.kiln_cache), "KILN_LOG_LEVEL": "INFO",
    }  # fmt: skip
    argv: list[str | os.PathLike[str]] = [KILN, "build", recipe_file, "--follow", "--no-boot-test"]
    up = await run([KILN, "up"], env=env, check=False, time_limit=300)
    try:
        if up.returncode != 0:
            build.error = f"kiln up failed: {up.stdout.strip()[-500:]}"
            return
        first = Build("kiln", "repeat-first", build.packages)
        await measure(first, argv, env, dirs.root)
        if first.error:
            build.error = f"the first build failed: {first.error}"
            return
        output = await measure(build, argv, env, dirs.root)
        if build.error:
            return
        if "the result of build" not in output:
            build.error = "the repeat was built, not answered by the result cache"
            return
        found = IMAGE_LINE.search(output)
        build.ok = found is not None
        build.image = found[2] if found else None
        build.image_bytes = int(found[3]) if found else 0
        build.steps.append({"step": "first build", "seconds": first.wall_s, "cached": False})
    finally:
        await run([KILN, "down"], env=env, check=False, time_limit=120)


# --- set-up and clean-up --------------------------------------------------------------------


def ensure_dib() -> str:
    """diskimage-builder in its own venv under .cache/ (made once); returns its version."""
    stamp = DIB_VENV / ".bench-installed"
    if not (stamp.is_file() and stamp.read_text().strip() == DIB_REQUIREMENT):
        print(f"installing {DIB_REQUIREMENT} into {DIB_VENV.relative_to(REPO)} ...", flush=True)
        shutil.rmtree(DIB_VENV, ignore_errors=True)
        DIB_VENV.parent.mkdir(parents=True, exist_ok=True)
        system = {"PATH": SYSTEM_PATH}  # the system python3, not this venv's
        run_sync(["python3", "-m", "venv", DIB_VENV], env=system, timeout=300)
        pip = DIB_VENV / "bin/pip"
        quiet = ["-q", "--disable-pip-version-check"]
        run_sync([pip, "install", *quiet, DIB_REQUIREMENT], timeout=900)
        stamp.write_text(DIB_REQUIREMENT + "\n")
    # dib's debootstrap element runs `debootstrap --version` even when it then
    # bootstraps with mmdebstrap (which it prefers when installed, as here).
    for command, package in DIB_HOST_PACKAGES.items():
        if shutil.which(command, path=SYSTEM_PATH) is None:
            print(f"installing {package} (diskimage-builder needs {command}) ...", flush=True)
            apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends"]
            apt += ["-o", "DPkg::Lock::Timeout=300", package]
            run_sync(apt, env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
    out = run_sync([DIB_VENV / "bin/disk-image-create", "--version"]).stdout
    return out.strip().splitlines()[-1]


def release(root: Path) -> list[str]:
    """Unmounts everything mounted under root and detaches every loop device whose
    backing file is under root (with its partition devices and the /dev/mapper
    links the kpartx stand-in made), on any path. tmpfs mounts go last: dib's
    image file, behind a loop device, lives in one. Returns what it released."""
    released: list[str] = []

    def unmount(point: str) -> None:
        for _ in range(5):
            if run_sync(["umount", point], check=False).returncode == 0:
                return
            time.sleep(0.5)
        run_sync(["umount", "-l", point], check=False)

    def mounts(tmpfs: bool) -> list[str]:
        found = [p for _, p, t in _mounts() if _under(p, root) and (t == "tmpfs") == tmpfs]
        return sorted(found, key=len, reverse=True)  # nested mounts before their parents

    for point in mounts(tmpfs=False):
        unmount(point)
        released.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            path = backing.read_text().strip().removesuffix(" (deleted)")
        except OSError:
            continue
        if not _under(path, root):
            continue
        device = f"/dev/{backing.parent.parent.name}"
        for link in Path("/dev/mapper").glob(f"{Path(device).name}p*"):
            if link.is_symlink():
                link.unlink()
        run_sync(["partx", "-d", device], check=False)
        run_sync(["losetup", "-d", device], check=False)
        released.append(f"loop {device}")
    for point in mounts(tmpfs=True):
        unmount(point)
        released.append(f"mount {point}")
    return released


def remove_temp_root(root: Path) -> None:
    left = [p for _, p, _ in _mounts() if _under(p, root)]
    if left:  # never rm -r through a mount (dib binds /dev, /proc and /sys into its chroot)
        print(f"bench: NOT removing {root}: still mounted: {left}", file=sys.stderr)
        return
    shutil.rmtree(root, ignore_errors=True)


# --- the run --------------------------------------------------------------------------------


async def bench(
    args: argparse.Namespace, dirs: Dirs, mirrors: Mirrors, builds: list[Build]
) -> None:
    """Appends each build to builds as it starts, so an interrupted run keeps its figures."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    failed: set[str] = set()
    # Interleaved (dib cold, Kiln cold, dib warm, ...): each tool still goes cold ->
    # warm -> warm+curl, and load from other builds on the host falls on both alike.
    for phase, packages in PHASES.items():
        if phase not in args.phases:
            continue
        for tool in args.tools:
            build = Build(tool, phase, list(packages))
            builds.append(build)
            if tool in failed:
                build.error = "skipped: an earlier run of this tool failed"
                continue
            print(f"--> {tool} {phase} ({', '.join(packages)})", flush=True)
            if tool == "dib":
                await build_dib(build, dirs, args.dib_bootstrap_cache, mirrors)
            elif phase == "repeat":
                await build_kiln_repeat(build, dirs, mirrors)
            else:
                await build_kiln(build, dirs, mirrors)
            leaked = release(dirs.root)
            if leaked:
                print(f"    left behind and released: {leaked}", flush=True)
            if build.ok:
                print(
                    f"    {build.wall_s:.1f} s, image {build.image_bytes / MiB:.0f} MiB"
                    f" (disk {build.image_virtual_bytes / MiB:.0f} MiB)",
                    flush=True,
                )
            else:
                failed.add(tool)
                print(f"    FAILED ({build.log}): {build.error}", flush=True)


def ratios(builds: list[Build]) -> dict[str, dict[str, float | None]]:
    by = {(b.tool, b.phase): b for b in builds}
    table: dict[str, dict[str, float | None]] = {}
    for phase in PHASES:
        dib, kiln = by.get(("dib", phase)), by.get(("kiln", phase))
        row: dict[str, float | None] = {}
        for what in ("wall_s", "cpu_s", "peak_rss_mib", "peak_rss_plus_tmpfs_mib", "image_bytes"):
            ok = dib is not None and kiln is not None and dib.ok and kiln.ok
            den = getattr(dib, what) if ok else 0
            row[what] = round(getattr(kiln, what) / den, 3) if ok and den else None
        table[phase] = row
    return table


def report(builds: list[Build], table: dict[str, dict[str, float | None]]) -> None:
    head = ("tool", "run", "wall s", "CPU s", "other CPU s", "RSS MiB", "RSS+tmpfs", "image MiB")
    print("\n" + "  ".join(f"{h:>11}" for h in head))
    for b in builds:
        if not b.ok:
            why = (b.error or "failed").splitlines()[0].rstrip(":")
            why += f" (log: {b.log})" if b.log else ""
            print(f"{b.tool:>11}  {b.phase:>11}  {why}")
            continue
        values = (b.wall_s, b.cpu_s, b.other_cpu_s, b.peak_rss_mib, b.peak_rss_plus_tmpfs_mib)
        figures = "  ".join(f"{v:>11.1f}" for v in (*values, b.image_bytes / MiB))
        print(f"{b.tool:>11}  {b.phase:>11}  {figures}")
    for b in builds:
        if b.steps:
            parts = [
                f"{st['step']} {st['seconds']:.1f}" + (" (cached)" if st.get("cached") else "")
                for st in b.steps
            ]
            print(f"  {b.tool} {b.phase} steps (s): " + ", ".join(parts))
    print("\nKiln/dib        wall     CPU     RSS  RSS+tmpfs   image   goal (wall)")
    for phase, row in table.items():
        cells = "  ".join(
            f"{v:>6.3f}" if v is not None else f"{'n/a':>6}"
            for v in (row["wall_s"], row["cpu_s"], row["peak_rss_mib"])
        )
        more = "  ".join(
            f"{v:>9.3f}" if v is not None else f"{'n/a':>9}"
            for v in (row["peak_rss_plus_tmpfs_mib"], row["image_bytes"])
        )
        goal = GOALS.get(phase)
        verdict = ""
        if goal is not None and row["wall_s"] is not None:
            verdict = f"<= {goal}: {'met' if row['wall_s'] <= goal else 'NOT met'}"
        print(f"{phase:<11}  {cells}  {more}   {verdict}")


NOTES = [
    "Kiln runs with --no-boot-test: diskimage-builder does not boot-test its images.",
    "dib's qcow2 is zlib-compressed (its default); Kiln outputs qcow2c (zstd clusters).",
    "RSS: summed over the build's process tree, sampled every 0.5 s (shared pages counted"
    " per process; PSS in the JSON). +tmpfs adds the RAM held in tmpfs mounts at the same"
    " instant: dib builds in tmpfs, Kiln on disk.",
    "CPU s: the build tree's user+system CPU (RUSAGE_CHILDREN); other CPU s: the rest of"
    " the host's busy CPU meanwhile (other builds, kernel threads such as loop I/O).",
    "repeat: dib has no result cache, so its repeat is a warm build; Kiln's repeat is"
    " `kiln build` of a recipe its `kiln up` stack built a moment before (the first build"
    " is in the steps, not in the figure).",
    "Kiln's layers stay in a fresh local cache dir (KILN_HOME points at an empty dir, so"
    " no `kiln up` storage service shares layers into the cold run).",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help="dib,kiln (default: both)")
    parser.add_argument(
        "--dib-bootstrap-cache",
        action="store_true",
        help="turn on dib's opt-in bootstrap tarball cache (off by default in dib)",
    )
    parser.add_argument("--phases", default=",".join(PHASES), help="default: " + ",".join(PHASES))
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.tools = [t for t in args.tools.split(",") if t]
    args.phases = [p for p in args.phases.split(",") if p]
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases: {sorted(unknown)}")
    if unknown := set(args.tools) - set(TOOLS):
        parser.error(f"unknown tools: {sorted(unknown)}")
    if os.geteuid() != 0:
        parser.error("needs root (loop devices, mounts, chroots)")
    if missing := [t for t in HOST_TOOLS if shutil.which(t, path=SYSTEM_PATH) is None]:
        parser.error(f"missing on this host: {missing}")
    mirrors = host_mirrors()
    dib_version = ensure_dib() if "dib" in args.tools else None
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-build-", dir="/var/tmp"))
    builds: list[Build] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    interrupted = False
    try:
        asyncio.run(bench(args, Dirs(root), mirrors, builds))
    except (KeyboardInterrupt, asyncio.CancelledError):
        interrupted = True
        print("bench: interrupted", file=sys.stderr)
        for build in builds:
            if not build.ok:
                build.error = build.error or "interrupted"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the clean-up must not be cut short
            signal.signal(sig, signal.SIG_IGN)
        leaked = release(root)
        if leaked:
            print(f"bench: released {leaked}", file=sys.stderr)
        remove_temp_root(root)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)

    table = ratios(builds)
    report(builds, table)
    print()
    for note in NOTES:
        print(f"note: {note}")
    busy = [b for b in builds if b.ok and b.other_cpu_s > 0.25 * b.wall_s]
    if busy:
        runs = ", ".join(f"{b.tool} {b.phase} ({b.other_cpu_s:.0f} s)" for b in busy)
        print(f"note: the host was busy with other work during: {runs}: timings are noisy.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    commit = run_sync(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False)
    document = {
        "started": started,
        "interrupted": interrupted,
        "host": {"cpus": os.cpu_count(), "mem_gib": _mem_gib()},
        "commit": commit.stdout.strip(),
        "diskimage_builder": dib_version,
        "command": {
            "dib": "disk-image-create vm debian-minimal -p PACKAGES -t qcow2 -o OUT",
            "dib_env": dib_env(Path("TEMP/dib-cache"), Path("TEMP/dib-tmp"), False, mirrors)
            | {"PATH": "bench/build/dib-shims:.cache/bench/dib-venv/bin:SYSTEM_PATH"},
            "dib_bootstrap_cache": args.dib_bootstrap_cache,
            "kiln": "kiln-builder bake RECIPE --out OUT --no-boot-test --cache-dir C --work-root W",
            "kiln_repeat": "kiln build RECIPE --follow --no-boot-test (twice, a kiln up stack)",
            "kiln_recipe": str(RECIPE.relative_to(REPO)),
        },
        "goals": GOALS,
        "builds": [asdict(b) for b in builds],
        "ratios_kiln_over_dib": table,
        "notes": NOTES,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    if interrupted:
        return 130
    return 0 if builds and all(b.ok for b in builds) else 1


def _mem_gib() -> float:
    with open("/proc/meminfo") as f:
        kib = int(f.readline().split()[1])
    return round(kib / (1 << 20), 1)


if __name__ == "__main__":
    sys.exit(main())
