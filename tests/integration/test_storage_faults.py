"""SeaweedFS killed (SIGKILL) in the middle of an upload through the storage
service, then started again on its ports and data: the client's parts are
retried until S3 is back, the artifact's checksums match the file, and after
the janitor no multipart upload is left in the bucket. Real weed, real
service, real client; nothing stands in for any of them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import payload, s3_settings

from kiln_client import AsyncStorageClient
from kiln_common.retry import RetryPolicy
from kiln_devstack.devservers import start_seaweed, stopping

pytestmark = pytest.mark.integration

MiB = 1 << 20
PART = 5 * MiB


async def test_an_upload_survives_s3_dying_mid_way_and_leaves_no_multipart_behind(  # type: ignore[no-untyped-def]
    storage_service, tmp_path: Path
) -> None:
    access, secret = "kiltfault", secrets.token_hex(16)
    weed = start_seaweed(tmp_path / "weed", tmp_path / "weed.log", access, secret)
    data = payload(48 * MiB, seed=5)
    source = tmp_path / "image.raw"
    source.write_bytes(data)
    restarted = None
    try:
        settings = s3_settings(weed, "kiln-faults", part_size=PART, s3_retries=1, s3_timeout=2.0)
        # Patient enough to outlast the restart, as a build's upload step is.
        policy = RetryPolicy(attempts=60, initial=0.5, maximum=2.0, deadline=120.0)
        async with (
            storage_service(**settings) as (app, address),
            AsyncStorageClient(address, policy=policy) as client,
        ):
            sent = 0
            killed = asyncio.Event()

            def progress(n: int) -> None:
                nonlocal sent
                sent += n
                if sent >= 2 * PART and not killed.is_set():
                    os.kill(weed.pid, signal.SIGKILL)
                    killed.set()

            upload = client.push(
                source, {"name": "fault"}, part_size=PART, concurrency=2, progress=progress
            )
            push = asyncio.create_task(upload)
            await asyncio.wait_for(killed.wait(), 60)
            await asyncio.sleep(3)  # parts fail meanwhile and are retried
            assert not push.done(), "the upload cannot finish while S3 is dead"
            restarted = await asyncio.to_thread(
                start_seaweed, tmp_path / "weed", tmp_path / "weed-2.log", access, secret, weed
            )
            artifact = await asyncio.wait_for(push, 120)
            assert artifact.checksums.sha256 == hashlib.sha256(data).hexdigest()
            assert artifact.size == len(data)
            dest = tmp_path / "back.raw"
            await client.get(artifact.id, dest, via_url=False)
            assert hashlib.sha256(dest.read_bytes()).hexdigest() == artifact.checksums.sha256
            # Parts a dying S3 half-took may linger as multipart uploads; once
            # they are old enough, the janitor aborts every one no session owns.
            later = datetime.now(UTC) + timedelta(days=2)
            await app.core.sweep(now=later)
            assert await app.core.store.mp_list() == []
    finally:
        with stopping(restarted.pid if restarted else weed.pid, grace=5):
            pass
