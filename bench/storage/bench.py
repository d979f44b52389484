"""bench/storage: a 1 GiB file through the Kiln storage service (S3 backend on
SeaweedFS) against the same file put/get with the MinIO SDK directly on the
same server, in the same run. Prints throughputs and the ratio service/direct
(goal: >= 0.8 both ways). Not a test: it asserts nothing and measures.

  .venv/bin/python bench/storage/bench.py [--size-mib 1024] [--rounds 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minio import Minio

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_client import StorageClient
from kiln_devstack.devservers import free_port, start_seaweed, stopping, wait_grpc_health

MiB = 1024 * 1024
PART = 16 * MiB


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(64 * MiB, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """Wall time and CPU seconds of the client (this process), the service and
    SeaweedFS for each operation: on a small machine the ratio is decided by
    who burns the CPU, so the report shows it."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.runs: dict[str, list[dict[str, float]]] = {}

    def run(self, name: str, fn) -> None:  # type: ignore[no-untyped-def]
        before = {k: cpu_seconds(p) for k, p in self.pids.items()} | {"client": own_cpu()}
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        after = {k: cpu_seconds(p) for k, p in self.pids.items()} | {"client": own_cpu()}
        sample = {"wall": wall} | {f"cpu_{k}": after[k] - before[k] for k in before}
        self.runs.setdefault(name, []).append(sample)

    def best(self, name: str) -> dict[str, float]:
        return min(self.runs[name], key=lambda s: s["wall"])


def one_round(
    meter: Meter, client: StorageClient, direct: Minio, source: Path, sha256: str, dest: Path
) -> None:
    """Direct and through-Kiln, alternating, so both see the same machine state."""
    meter.run(
        "s3_up", lambda: direct.fput_object("direct", "source.bin", str(source), part_size=PART)
    )
    pushed: list[pb.Artifact] = []
    meter.run(
        "svc_up", lambda: pushed.append(client.push(source, {"name": "bench"}, part_size=PART))
    )
    artifact = pushed[0]
    if artifact.checksums.sha256 != sha256:
        raise SystemExit("the service stored other bytes than were sent")
    meter.run("s3_down", lambda: direct.fget_object("direct", "source.bin", str(dest)))
    dest.unlink()
    meter.run("svc_down", lambda: client.get(artifact.id, dest))
    dest.unlink()
    meter.run("svc_stream", lambda: client.get(artifact.id, dest, via_url=False))
    dest.unlink()
    direct.remove_object("direct", "source.bin")
    client.delete(artifact.id)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    size = args.size_mib * MiB
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-", dir=os.environ.get("BENCH_DIR")))
    access, secret = "kilnbench", secrets.token_hex(16)
    weed = start_seaweed(base / "weed", base / "weed.log", access, secret)
    with stopping(weed.pid):
        source = base / "source.bin"
        sha256 = make_file(source, size)
        address = f"127.0.0.1:{free_port()}"
        env = {
            "PATH": os.environ["PATH"],
            "KILN_STORAGE_BACKEND": "s3",
            "KILN_STORAGE_S3_ENDPOINT": weed.endpoint,
            "KILN_STORAGE_S3_ACCESS_KEY": access,
            "KILN_STORAGE_S3_SECRET_KEY": secret,
            "KILN_STORAGE_S3_BUCKET": "kiln-bench",
            "KILN_STORAGE_GRPC_BIND": address,
            "KILN_STORAGE_LOG_LEVEL": "WARNING",
        }
        log = base / "storage.log"
        with open(log, "wb") as out:
            service = subprocess.Popen(
                [sys.executable, "-m", "kiln_storage"], env=env, stdout=out, stderr=out
            )
        with stopping(service.pid):
            wait_grpc_health(address, service.pid, log)
            client = StorageClient(address)
            direct = Minio(
                weed.endpoint,
                access_key=access,
                secret_key=secret,
                secure=False,
                region="us-east-1",
            )
            if not direct.bucket_exists("direct"):
                direct.make_bucket("direct")
            meter = Meter({"service": service.pid, "seaweed": weed.pid})
            for _ in range(args.rounds):
                one_round(meter, client, direct, source, sha256, base / "dest.bin")
            rss = peak_rss_mib(service.pid)
            client.close()

    best = {k: meter.best(k) for k in ("s3_up", "svc_up", "s3_down", "svc_down", "svc_stream")}
    mibps = {k: args.size_mib / v["wall"] for k, v in best.items()}
    report = {
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "best": best,
        "mib_per_s": mibps,
        "ratio_upload": mibps["svc_up"] / mibps["s3_up"],
        "ratio_download": mibps["svc_down"] / mibps["s3_down"],
        "ratio_download_grpc_stream": mibps["svc_stream"] / mibps["s3_down"],
        "service_peak_rss_mib": rss,
        "cores": os.cpu_count(),
    }
    gib = args.size_mib / 1024
    print(f"{args.size_mib} MiB, best of {args.rounds}, {os.cpu_count()} cores")
    print(f"{'':24}{'seconds':>8}{'MiB/s':>8}   CPU s/GiB: client service seaweed")
    for key, label in (
        ("s3_up", "direct MinIO SDK put"),
        ("svc_up", "kiln push"),
        ("s3_down", "direct MinIO SDK get"),
        ("svc_down", "kiln get (URL)"),
        ("svc_stream", "kiln get (gRPC stream)"),
    ):
        b = best[key]
        cpu = [b[f"cpu_{who}"] / gib for who in ("client", "service", "seaweed")]
        print(
            f"{label:24}{b['wall']:>8.2f}{mibps[key]:>8.1f}   "
            f"{cpu[0]:>14.2f}{cpu[1]:>8.2f}{cpu[2]:>8.2f}"
        )
    print(f"ratio service/direct upload   {report['ratio_upload']:.2f}  (goal >= 0.8)")
    print(
        f"ratio service/direct download {report['ratio_download']:.2f}  (goal >= 0.8; "
        f"gRPC stream {report['ratio_download_grpc_stream']:.2f})"
    )
    print(f"storage service peak RSS      {rss:.0f} MiB")
    out_dir = Path(__file__).resolve().parents[1] / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "storage.json").write_text(json.dumps(report, indent=2))
    subprocess.run(["rm", "-rf", str(base)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
