"""The storage core over the filesystem backend (real files, no servers).
Events go to an in-memory recorder: the NATS path is covered by integration tests."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import gather_bytes, payload

from kiln_common.errors import FailedPrecondition, InvalidArgument, NotFound
from kiln_common.ids import new_id
from kiln_storage.backends.fs import FilesystemStore
from kiln_storage.core import CoreConfig, StorageCore
from kiln_storage.model import Checksums
from kiln_storage.sharing import REF_BATCH
from kiln_storage.uploads import MIN_PART

PART = MIN_PART


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    async def publish(self, type_: str, subject: str, data: dict[str, Any]) -> None:
        self.events.append((type_, subject, data))

    async def close(self) -> None:
        return None


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store")


@pytest.fixture
def events() -> Recorder:
    return Recorder()


@pytest.fixture
def core(store: FilesystemStore, events: Recorder) -> StorageCore:
    return StorageCore(store, events, CoreConfig(part_size=PART, upload_concurrency=2))


async def chunks_of(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


async def test_upload_computes_all_checksums_and_emits_stored(
    core: StorageCore, events: Recorder
) -> None:
    data = payload(2 * PART + 1234)
    artifact = await core.upload({"name": "demo"}, Checksums(), None, chunks_of(data, 777_777))
    assert artifact.size == len(data)
    for alg in ("sha256", "sha512", "sha1", "md5"):
        assert getattr(artifact.checksums, alg) == hashlib.new(alg, data).hexdigest()
    assert events.events == [("artifact.stored", artifact.id, artifact.public())]
    _, stream = await core.read(artifact.id)
    assert await gather_bytes(stream) == data


async def test_checksum_mismatch_rejects_and_stores_nothing(
    core: StorageCore, store: FilesystemStore, events: Recorder
) -> None:
    data = payload(PART + 10)
    wrong = Checksums(sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(InvalidArgument, match=r"checksum mismatch.*nothing was stored"):
        await core.upload({"name": "x"}, wrong, None, chunks_of(data))
    assert files_under(store.root) == []
    assert events.events == []


async def test_empty_upload_is_rejected_and_leaves_nothing(
    core: StorageCore, store: FilesystemStore
) -> None:
    with pytest.raises(InvalidArgument, match="empty upload"):
        await core.upload({}, Checksums(), None, chunks_of(b""))
    assert files_under(store.root) == []


async def test_declared_size_must_match(core: StorageCore, store: FilesystemStore) -> None:
    with pytest.raises(InvalidArgument, match="size mismatch"):
        await core.upload({}, Checksums(), 10, chunks_of(b"x" * 11))
    with pytest.raises(InvalidArgument, match="size mismatch"):
        await core.upload({}, Checksums(), 12, chunks_of(b"x" * 11))
    assert files_under(store.root) == []


async def test_same_bytes_are_stored_once_and_freed_with_the_last_artifact(
    core: StorageCore, store: FilesystemStore
) -> None:
    data = payload(PART + 99, seed=3)
    first = await core.upload({"name": "a"}, Checksums(), None, chunks_of(data))
    second = await core.upload({"name": "b"}, Checksums(), None, chunks_of(data))
    assert first.id != second.id and first.blob == second.blob
    assert len(list((store.root / "objects/blobs").iterdir())) == 1
    await core.delete(first.id)
    _, stream = await core.read(second.id)
    assert await gather_bytes(stream) == data
    await core.delete(second.id)
    assert files_under(store.root) == []


async def test_read_honours_offset_and_length(core: StorageCore) -> None:
    data = payload(PART + 5000, seed=4)
    artifact = await core.upload({}, Checksums(), None, chunks_of(data))
    _, stream = await core.read(artifact.id, offset=PART - 10, length=100)
    assert await gather_bytes(stream) == data[PART - 10 : PART + 90]
    _, stream = await core.read(artifact.id, offset=len(data))
    assert await gather_bytes(stream) == b""
    with pytest.raises(InvalidArgument, match="past the end"):
        await core.read(artifact.id, offset=len(data) + 1)


async def test_unknown_ids_are_not_found_and_bad_ids_invalid(core: StorageCore) -> None:
    with pytest.raises(NotFound, match="artifact 01m81xd1f8vz217x3gpcw23fyb not found"):
        await core.stat("01m81xd1f8vz217x3gpcw23fyb")
    with pytest.raises(InvalidArgument):
        await core.stat("../../etc/passwd")
    with pytest.raises(NotFound):
        await core.delete("01m81xd1f8vz217x3gpcw23fyb")


async def test_list_filters_by_labels_and_paginates(core: StorageCore) -> None:
    made = []
    for i in range(5):
        made.append(
            await core.upload(
                {"name": "demo" if i % 2 == 0 else "other", "version": str(i)},
                Checksums(),
                None,
                chunks_of(payload(100, seed=i)),
            )
        )
    page, token = await core.list_artifacts({"name": "demo"}, page_size=2)
    assert [a.id for a in page] == [made[0].id, made[2].id] and token
    rest, token = await core.list_artifacts({"name": "demo"}, page_size=2, page_token=token)
    assert [a.id for a in rest] == [made[4].id] and token == ""
    everything, _ = await core.list_artifacts({})
    assert len(everything) == 5
    with pytest.raises(InvalidArgument, match="page_size"):
        await core.list_artifacts({}, page_size=5000)


async def test_resumable_upload_out_of_order_with_resent_part(
    core: StorageCore, store: FilesystemStore
) -> None:
    data = payload(3 * PART + 7, seed=5)
    parts = [data[i : i + PART] for i in range(0, len(data), PART)]
    session = await core.create_upload(
        {"name": "resumed"}, Checksums(sha256=hashlib.sha256(data).hexdigest()), len(data)
    )
    await core.put_part(session.upload_id, 2, chunks_of(parts[1]))
    await core.put_part(session.upload_id, 1, chunks_of(parts[0]))
    # A connection drops after part 4 was half sent: nothing of it is kept.
    state = await core.get_upload(session.upload_id)
    assert [(p.number, p.size) for p in state.parts] == [(1, PART), (2, PART)]
    with pytest.raises(FailedPrecondition, match="parts missing: 3"):
        await core.put_part(session.upload_id, 4, chunks_of(parts[3]))
        await core.complete_upload(session.upload_id)
    await core.put_part(session.upload_id, 1, chunks_of(parts[0]))  # re-sent
    await core.put_part(session.upload_id, 3, chunks_of(parts[2]))
    artifact = await core.complete_upload(session.upload_id)
    assert artifact.checksums.sha256 == hashlib.sha256(data).hexdigest()
    assert artifact.checksums.md5 == hashlib.md5(data).hexdigest()
    assert not (store.root / "objects/uploads").exists() or not list(
        (store.root / "objects/uploads").iterdir()
    )


async def test_a_new_core_completes_an_upload_another_started(
    store: FilesystemStore, events: Recorder
) -> None:
    data = payload(PART + 3, seed=6)
    first = StorageCore(store, events, CoreConfig(part_size=PART))
    session = await first.create_upload({}, Checksums(), None)
    await first.put_part(session.upload_id, 1, chunks_of(data[:PART]))
    second = StorageCore(store, events, CoreConfig(part_size=PART))  # another replica
    await second.put_part(session.upload_id, 2, chunks_of(data[PART:]))
    artifact = await second.complete_upload(session.upload_id)
    assert artifact.checksums.sha1 == hashlib.sha1(data).hexdigest()


async def test_part_rules_are_enforced(core: StorageCore) -> None:
    session = await core.create_upload({}, Checksums(), None)
    with pytest.raises(InvalidArgument, match="larger than"):
        await core.put_part(session.upload_id, 1, chunks_of(b"x" * (PART + 1)))
    with pytest.raises(InvalidArgument, match="empty"):
        await core.put_part(session.upload_id, 1, chunks_of(b""))
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        await core.put_part(session.upload_id, 1, chunks_of(b"abc"), "0" * 64)
    await core.put_part(session.upload_id, 1, chunks_of(b"short"))
    await core.put_part(session.upload_id, 2, chunks_of(b"more"))
    with pytest.raises(FailedPrecondition, match="every part but the last"):
        await core.complete_upload(session.upload_id)
    with pytest.raises(InvalidArgument, match="part_size"):
        await core.create_upload({}, Checksums(), None, part_size=1024)


async def test_abort_removes_the_session_and_its_parts(
    core: StorageCore, store: FilesystemStore
) -> None:
    session = await core.create_upload({}, Checksums(), None)
    await core.put_part(session.upload_id, 1, chunks_of(payload(PART)))
    await core.abort_upload(session.upload_id)
    assert files_under(store.root) == []
    with pytest.raises(NotFound, match="completed, aborted or expired"):
        await core.get_upload(session.upload_id)


async def test_janitor_removes_abandoned_uploads_only(
    core: StorageCore, store: FilesystemStore
) -> None:
    old = await core.create_upload({}, Checksums(), None)
    await core.put_part(old.upload_id, 1, chunks_of(b"abandoned"))
    orphan_id = await store.mp_create("blobs/orphan", PART)  # crashed before its session
    kept = await core.upload({}, Checksums(), None, chunks_of(b"kept"))
    assert await core.sweep(datetime.now(UTC) + timedelta(days=2)) == 2
    assert await store.mp_list() == []
    with pytest.raises(NotFound):
        await core.get_upload(old.upload_id)
    assert (await core.stat(kept.id)).size == 4
    assert orphan_id


async def test_download_urls_need_a_signer_and_bounded_lifetimes(core: StorageCore) -> None:
    artifact = await core.upload({"name": "demo"}, Checksums(), None, chunks_of(b"x"))
    with pytest.raises(FailedPrecondition, match="no download URLs"):
        await core.download_url(artifact.id)
    with pytest.raises(InvalidArgument, match="expires_in"):
        await core.download_url(artifact.id, timedelta(days=30))


async def test_delete_finds_a_sharer_behind_many_refs(
    core: StorageCore, store: FilesystemStore
) -> None:
    """Refs are read in batches: a sharer after the first batch still keeps the blob."""
    data = payload(1000, seed=8)
    first = await core.upload({"name": "a"}, Checksums(), None, chunks_of(data))
    for _ in range(REF_BATCH + 50):  # whole artifacts with these bytes, on another blob
        other = replace(first, id=new_id(), blob="blobs/elsewhere")
        await store.put(f"refs/{first.checksums.sha256}/{other.id}", b"")
        await store.put(f"artifacts/{other.id}.json", json.dumps(other.to_record()).encode())
    await asyncio.sleep(0.002)  # the sharer's id sorts after all of them
    sharer = await core.upload({"name": "b"}, Checksums(), None, chunks_of(data))
    assert sharer.blob == first.blob
    await core.delete(first.id)
    _, stream = await core.read(sharer.id)
    assert await gather_bytes(stream) == data
