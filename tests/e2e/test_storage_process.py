"""The storage service run on its own, as Kubernetes runs it: configured by env
and a YAML file, healthy via grpc.health.v1, graceful on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import s3_settings

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_api.storage.v1 import storage_pb2_grpc as pb_grpc
from kiln_devstack.devservers import Nats, Seaweed, free_port, wait_grpc_health

pytestmark = pytest.mark.e2e


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kiln_storage"],
            env={"PATH": os.environ["PATH"], **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_runs_from_env_and_yaml_and_stops_gracefully_on_sigterm(
    tmp_path: Path, seaweed: Seaweed, bucket: str, nats_server: Nats
) -> None:
    settings = s3_settings(seaweed, bucket, nats_url=nats_server.url)
    secret = settings.pop("s3_secret_key")
    config = tmp_path / "storage.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in settings.items()))
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "storage.log"
    proc = start(
        {
            "KILN_STORAGE_CONFIG_FILE": str(config),
            "KILN_STORAGE_S3_SECRET_KEY": secret,
            "KILN_STORAGE_GRPC_BIND": address,
        },
        log,
    )
    try:
        wait_grpc_health(address, proc.pid, log, timeout=30)
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="kiln.storage.v1.Storage")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.StorageStub(channel)
            header = pb.UploadRequest(header=pb.UploadHeader(labels={"name": "p"}))
            artifact = stub.Upload(iter([header, pb.UploadRequest(chunk=b"from a process")]))
            assert artifact.size == 14
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "signal received: shutting down" in text
    assert secret not in text, "the secret key must never be logged"


def test_an_unreachable_s3_at_start_is_a_clear_error(tmp_path: Path) -> None:
    log = tmp_path / "storage.log"
    started = time.monotonic()
    proc = start(
        {
            "KILN_STORAGE_BACKEND": "s3",
            "KILN_STORAGE_S3_ENDPOINT": f"127.0.0.1:{free_port()}",
            "KILN_STORAGE_S3_RETRIES": "1",
            "KILN_STORAGE_GRPC_BIND": f"127.0.0.1:{free_port()}",
        },
        log,
    )
    assert proc.wait(timeout=60) == 1
    assert time.monotonic() - started < 30
    text = log.read_text()
    assert "cannot start: S3 endpoint unreachable" in text
    assert "Traceback" not in text


def test_bad_settings_exit_2_naming_the_field(tmp_path: Path) -> None:
    log = tmp_path / "storage.log"
    proc = start({"KILN_STORAGE_BACKEND": "tape"}, log)
    assert proc.wait(timeout=30) == 2
    assert "backend" in log.read_text() and "Traceback" not in log.read_text()
