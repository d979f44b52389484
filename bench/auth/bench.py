"""bench/auth: what checking identities adds, in one run: p50 of SubmitBuild
(an API-only builder) and of downloading a 1 GiB artifact through the storage
service's gRPC stream, each with `auth: off` and with `auth: required` and a
static token (the interceptor, the token's lookup in NATS and its cache), on a
real nats-server, the services in this process, calls over loopback gRPC.
Rounds alternate off and required so load from elsewhere falls on both.
Prints the p50s and the ratios required/off (issue 18's goal: <= 1.05). Not a
test: it asserts nothing. Writes bench/results/auth.json.

  .venv/bin/python bench/auth/bench.py [--submits 200] [--size-mib 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import nats

from kiln_api.builder.v1 import builder_pb2 as bpb
from kiln_api.builder.v1 import builder_pb2_grpc as bpb_grpc
from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_api.storage.v1 import storage_pb2_grpc as spb_grpc
from kiln_builder.service.app import build as build_builder
from kiln_builder.service.settings import BuilderSettings
from kiln_client import credentials
from kiln_common.auth import Role
from kiln_common.auth.static import StaticTokens
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_devstack.devservers import start_nats, stopping
from kiln_storage.app import build as build_storage
from kiln_storage.settings import StorageSettings

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "auth.json"
RECIPE = 'name: auth-bench\nversion: "1"\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n'
CHUNK = 4 << 20


@asynccontextmanager
async def channel(address: str, token: str) -> AsyncIterator[grpc.aio.Channel]:
    bearer = credentials.interceptors(token)
    async with grpc.aio.insecure_channel(
        address, options=CHANNEL_OPTIONS, interceptors=bearer
    ) as opened:
        yield opened


async def submits(address: str, token: str, count: int) -> list[float]:
    """Seconds of each SubmitBuild (the builder has no worker: they stay queued)."""
    request = bpb.SubmitBuildRequest(recipe=bpb.RecipeSource(yaml=RECIPE), skip_boot_test=True)
    taken = []
    async with channel(address, token) as opened:
        stub = bpb_grpc.BuilderStub(opened)
        await stub.SubmitBuild(request)  # warm: the connection, the token's cache
        for _ in range(count):
            start = time.perf_counter()
            await stub.SubmitBuild(request)
            taken.append(time.perf_counter() - start)
    return taken


async def download(address: str, token: str, artifact_id: str) -> float:
    async with channel(address, token) as opened:
        stub = spb_grpc.StorageStub(opened)
        start = time.perf_counter()
        async for _ in stub.Download(spb.DownloadRequest(id=artifact_id)):
            pass
        return time.perf_counter() - start


async def upload(address: str, token: str, size: int) -> str:
    async def requests() -> AsyncIterator[spb.UploadRequest]:
        yield spb.UploadRequest(header=spb.UploadHeader(labels={"name": "auth-bench"}))
        block = os.urandom(CHUNK)
        for _ in range(size // CHUNK):
            yield spb.UploadRequest(chunk=block)

    async with channel(address, token) as opened:
        return (await spb_grpc.StorageStub(opened).Upload(requests())).id


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    server = start_nats(work / "nats", work / "nats.log")
    with stopping(server.pid):
        nc = await nats.connect(server.url)
        token, _ = await StaticTokens(nc.jetstream()).issue("bench", Role.ADMIN)
        await nc.close()
        found: dict[str, dict[str, list[float]]] = {
            "off": {"submit": [], "download": []},
            "required": {"submit": [], "download": []},
        }
        for round_ in range(args.rounds):
            for mode in ("off", "required"):
                sent = token if mode == "required" else ""
                print(f"round {round_ + 1}, auth {mode}", flush=True)
                times = await one_round(args, work / f"{round_}-{mode}", server.url, mode, sent)
                found[mode]["submit"] += times["submit"]
                found[mode]["download"] += times["download"]
    p50 = {m: {k: statistics.median(v) for k, v in kinds.items()} for m, kinds in found.items()}
    return {
        "submits_per_round": args.submits, "size_mib": args.size_mib, "rounds": args.rounds,
        "p50_s": p50,
        "ratio_required_to_off": {
            k: p50["required"][k] / p50["off"][k] for k in ("submit", "download")
        },
    }  # fmt: skip


async def one_round(
    args: argparse.Namespace, where: Path, nats_url: str, mode: str, token: str
) -> dict[str, list[float]]:
    storage = await build_storage(StorageSettings(
        grpc_bind="127.0.0.1:0", http_port=0, fs_root=where / "store", auth=mode,
        nats_url=nats_url, outbox_dir=where / "outbox", shutdown_grace=1.0,
    ))  # fmt: skip
    builder = await build_builder(BuilderSettings(
        grpc_bind="127.0.0.1:0", nats_url=nats_url, worker=False, auth=mode,
        work_root=where / "work", cache_dir=where / "cache", outbox_dir=where / "outbox-b",
        shutdown_grace=1.0,
    ))  # fmt: skip
    try:
        storage_at = f"127.0.0.1:{await storage.grpc.start()}"
        builder_at = f"127.0.0.1:{await builder.grpc.start()}"
        taken = await submits(builder_at, token, args.submits)
        artifact_id = await upload(storage_at, token, args.size_mib << 20)
        return {"submit": taken, "download": [await download(storage_at, token, artifact_id)]}
    finally:
        await builder.stop()
        await storage.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--submits", type=int, default=200, help="SubmitBuild calls a round")
    parser.add_argument("--size-mib", type=int, default=1024, help="the artifact downloaded")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each mode")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-auth-", dir="/var/tmp") as work:
        result = asyncio.run(run(args, Path(work)))
    p50, ratio = result["p50_s"], result["ratio_required_to_off"]
    print(f"\n{'':>10} {'auth off':>12} {'required':>12} {'ratio':>8}   (goal <= 1.05)")
    for kind, unit, scale in (("submit", "ms", 1000), ("download", "s", 1)):
        off, on = p50["off"][kind] * scale, p50["required"][kind] * scale
        print(f"{kind:>10} {off:>10.2f}{unit} {on:>10.2f}{unit} {ratio[kind]:>8.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
