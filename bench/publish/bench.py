"""bench/publish: the same 1 GiB qcow2 to the same real Glance (with Keystone),
by Kiln's GlancePublisher (its bytes streaming from the storage service) and by
`openstack image create --file` (python-openstackclient, from a local file), in
one run. Prints each one's throughput and peak RSS, and the ratios Kiln/client
(goal >= 1.0). Not a test: it asserts only that each image is whole.

The goal's ratio compares like with like: both publish with Glance's upload
call, to a Glance with import disabled (RegionTwo), Kiln streaming from the
storage service and the client reading a local file. Kiln is also measured the
two ways it publishes to a Glance with import enabled (RegionOne, the same
Keystone): web-download (Glance pulls the storage URL) and glance-direct (the
publisher streams storage's bytes to Glance's staging area). An import writes
the bytes twice (staging, then the store) so that the cloud's import plugins
run: those two figures are for information.

  .venv/bin/python bench/publish/bench.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))  # bench/proctree.py
from proctree import proc_table  # noqa: E402

MiB = 1 << 20


def worker(spec: dict[str, Any]) -> None:
    """In a child process (so its peak RSS is its own): one publication."""
    import aiohttp

    from kiln_publisher.glance import GlancePublisher, GlanceTarget, ImageSource

    async def stream() -> Any:
        async with aiohttp.ClientSession() as session, session.get(spec["stream_url"]) as reply:
            reply.raise_for_status()
            async for chunk in reply.content.iter_chunked(MiB):
                yield chunk

    async def publish() -> dict[str, str]:
        source = ImageSource(
            spec["artifact_id"], spec["url"], spec["size"], spec["sha256"], spec["sha512"],
            "qcow2", spec["name"], {"os_distro": "debian"}, stream,
        )  # fmt: skip
        target = GlanceTarget("admin", region=spec["region"])
        done = await GlancePublisher(Path(spec["clouds"])).publish(source, target)
        return {"image_id": done.image_id, "method": done.method}

    print(json.dumps(asyncio.run(publish())))


def timed_child(argv: list[str], env: dict[str, str], log: Path) -> tuple[float, float, str]:
    """Runs argv; returns (seconds, peak RSS MiB of it and its children, its output).
    The peak is sampled (VmHWM, every 20 ms): wait4's ru_maxrss would count the
    forked copy of this process before exec."""
    from kiln_common.proc import spawn

    start = time.perf_counter()
    child = spawn(argv, log_file=log, env=env)
    peak = 0
    while child.poll() is None:
        peak = max(peak, sum(_hwm(pid) for pid in subtree(child.pid)))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({child.returncode}); see {log}")
    return seconds, peak / MiB, log.read_text()


def subtree(root: int) -> set[int]:
    """root and its descendants (not the servers this bench started beside it)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in proc_table().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo += children.get(pid, [])
    return found


def _hwm(pid: int) -> int:
    """A process's peak RSS so far, in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def make_qcow2(base: Path, size: int) -> Path:
    """A qcow2 of size bytes of random data (incompressible, all allocated)."""
    from kiln_common.proc import run_sync

    raw = base / "image.raw"
    with open(raw, "wb") as f:
        for _ in range(size // (64 * MiB)):
            f.write(os.urandom(64 * MiB))
    out = base / "image.qcow2"
    run_sync(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])
    raw.unlink()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0

    from kiln_client import StorageClient
    from kiln_common.proc import run_sync, spawn
    from kiln_devstack.devservers import (
        free_port,
        start_glance,
        start_keystone,
        stopping,
        wait_grpc_health,
        write_clouds_yaml,
    )

    base = Path(tempfile.mkdtemp(prefix="kiln-bench-publish-", dir=os.environ.get("BENCH_DIR")))
    schemas = REPO / ".cache" / "openstack"
    keystone = start_keystone(base / "keystone", base / "keystone.log", (), schemas)
    with stopping(keystone.pid):
        glance = start_glance(base / "glance", base / "glance.log", keystone, schema_cache=schemas)
        upload_only = start_glance(base / "glance2", base / "glance2.log", keystone,
                                   "RegionTwo", (), schema_cache=schemas)  # fmt: skip
        with stopping(glance.pid), stopping(upload_only.pid):
            clouds = write_clouds_yaml(base / "clouds.yaml", keystone, ("RegionOne", "RegionTwo"))
            image = make_qcow2(base, args.size_mib * MiB)
            address = f"127.0.0.1:{free_port()}"
            storage_env = {
                "KILN_STORAGE_BACKEND": "fs",
                "KILN_STORAGE_FS_ROOT": str(base / "storage"),
                "KILN_STORAGE_GRPC_BIND": address,
                "KILN_STORAGE_HTTP_PORT": str(free_port()),
                "KILN_STORAGE_LOG_LEVEL": "WARNING",
            }
            storage_log = base / "storage.log"
            storage = spawn([sys.executable, "-m", "kiln_storage"], log_file=storage_log,
                            env=storage_env)  # fmt: skip
            with stopping(storage.pid):
                wait_grpc_health(address, storage.pid, storage_log)
                with StorageClient(address) as client:
                    artifact = client.push(image, {"name": "bench"})
                    url = client.url(artifact.id)
                results = run_all(base, clouds, image, artifact, url)
    report(args.size_mib, results)
    run_sync(["rm", "-rf", base])
    return 0


def run_all(base: Path, clouds: Path, image: Path, artifact: Any, url: str) -> dict[str, Any]:
    env = {"OS_CLIENT_CONFIG_FILE": str(clouds)}
    spec = {
        "clouds": str(clouds), "artifact_id": artifact.id, "size": artifact.size,
        "sha256": artifact.checksums.sha256, "sha512": artifact.checksums.sha512,
        "stream_url": url,
    }  # fmt: skip
    results: dict[str, Any] = {}
    runs = (("kiln upload", url, "RegionTwo"), ("kiln web-download", url, "RegionOne"),
            ("kiln glance-direct", "", "RegionOne"))  # fmt: skip
    for label, given_url, region in runs:
        one = {**spec, "url": given_url, "name": f"kiln-{secrets.token_hex(3)}", "region": region}
        one["artifact_id"] = f"{artifact.id}-{secrets.token_hex(3)}"  # not "existing"
        argv = [sys.executable, __file__, "--worker", json.dumps(one)]
        seconds, rss, out = timed_child(argv, env, base / f"{label.replace(' ', '-')}.log")
        done = json.loads(out.strip().splitlines()[-1])
        results[label] = {"seconds": seconds, "peak_rss_mib": rss, **done}
    client = str(Path(sys.executable).parent / "openstack")
    argv = [
        client, "--os-cloud", "admin", "--os-region-name", "RegionTwo",
        "image", "create", "--file", str(image),
        "--disk-format", "qcow2", "--container-format", "bare", "-f", "json",
        f"osc-{secrets.token_hex(3)}",
    ]  # fmt: skip
    seconds, rss, out = timed_child(argv, env, base / "openstack.log")
    made = json.loads(out[out.index("{") :])
    results["openstack image create --file"] = {
        "seconds": seconds, "peak_rss_mib": rss, "image_id": made["id"], "method": "upload",
    }  # fmt: skip
    check(clouds, results, artifact.checksums.sha512)
    return results


def check(clouds: Path, results: dict[str, Any], sha512: str) -> None:
    """Every image active with the artifact's SHA-512 (the client's may be
    reported before Glance has finished: waited for)."""
    import openstack
    import openstack.config

    config = openstack.config.OpenStackConfig(config_files=[str(clouds)])
    for label, result in results.items():
        region = "RegionOne" if "web-download" in label or "glance-direct" in label else "RegionTwo"
        conn = openstack.connection.Connection(
            config=config.get_one(cloud="admin", region_name=region)
        )
        image = conn.image.get_image(result["image_id"])
        conn.image.wait_for_status(image, "active", wait=600)
        image = conn.image.get_image(result["image_id"])
        if image.hash_value != sha512:
            raise SystemExit(f"{label}: Glance holds other bytes ({image.hash_value})")


def report(size_mib: int, results: dict[str, Any]) -> None:
    client = results["openstack image create --file"]
    print(f"{size_mib} MiB qcow2 to Glance (gunicorn, 1 worker each), {os.cpu_count()} cores")
    print(f"{'':34}{'seconds':>8}{'MiB/s':>8}{'peak RSS MiB':>14}")
    for label, r in results.items():
        r["mib_per_s"] = size_mib / r["seconds"]
        print(f"{label:34}{r['seconds']:>8.1f}{r['mib_per_s']:>8.1f}{r['peak_rss_mib']:>14.0f}")
    for label in ("kiln upload", "kiln web-download", "kiln glance-direct"):
        ratio = results[label]["mib_per_s"] / client["mib_per_s"]
        results[label]["ratio_to_client"] = ratio
        goal = "  (the goal: >= 1.0, the same upload call)" if label == "kiln upload" else ""
        print(f"ratio {label} / openstack client: {ratio:.2f}{goal}")
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "publish.json").write_text(json.dumps({"size_mib": size_mib, **results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
