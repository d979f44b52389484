"""The listing index's key scheme and its choice of index, over the filesystem
backend (real files, no servers)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kiln_common.ids import new_id
from kiln_storage.backends.base import check_key
from kiln_storage.backends.fs import FilesystemStore
from kiln_storage.index import ArtifactIndex, id_time, label_prefix, marker_keys, value_code
from kiln_storage.model import Artifact


def test_value_codes_are_key_segments_and_never_collide() -> None:
    assert value_code("1.2.3") == "v-1.2.3"
    assert value_code("") == "v-"
    odd = ["a/b", "..", "with space", "é", "x" * 256, "v-x", "h-" + "0" * 64]
    codes = [value_code(v) for v in ["1.2.3", "", *odd]]
    assert len(set(codes)) == len(codes)
    for code in codes:
        check_key(code)  # a valid single segment on both backends
        assert len(code) <= 102
    # A plain value cannot pose as the hash of another value.
    assert value_code("h-" + value_code("a/b")[2:]).startswith("v-")
    assert label_prefix("name", "a/b").count("/") == 4


def test_markers_name_every_index_of_an_artifact() -> None:
    artifact_id = new_id()
    assert marker_keys(artifact_id, {"name": "n", "format": "qcow2"}) == [
        f"index/all/{artifact_id}",
        f"index/label/name/v-n/{artifact_id}",
        f"index/label/format/v-qcow2/{artifact_id}",
    ]


def test_id_time_reads_the_time_an_id_was_made() -> None:
    assert abs(id_time(new_id()) - datetime.now(UTC)) < timedelta(seconds=2)


async def test_the_sparsest_label_index_drives_the_walk(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    reads: list[str] = []

    async def read(artifact_id: str) -> Artifact | None:
        reads.append(artifact_id)
        return None  # no records: only the walk is under test

    index = ArtifactIndex(store, read)
    ids = sorted(new_id() for _ in range(40))
    for n, artifact_id in enumerate(ids):
        labels = {"common": "yes"} | ({"rare": "yes"} if n % 10 == 0 else {})
        await index.add(artifact_id, labels)
    prefix, batch = await index._driver(
        [label_prefix("common", "yes"), label_prefix("rare", "yes")], "", 3
    )
    assert prefix == label_prefix("rare", "yes")
    assert batch == [prefix + i for i in ids[::10][:3]]
    # Without records, a page is empty, and only the rare index's ids were read.
    assert await index.page({"common": "yes", "rare": "yes"}, 3, "") == ([], "")
    assert sorted(reads) == ids[::10]


async def test_fs_listing_of_a_large_directory_is_reused_until_it_changes(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "store")
    folder = store.local_path("index/all")
    folder.mkdir(parents=True)
    names = sorted(f"{n:05d}" for n in range(1200))
    for name in names:
        (folder / name).touch()
    past = 1_000_000_000  # a directory still for long: its listing may be kept
    os.utime(folder, (past, past))
    assert await store.list_keys("index/all/", limit=2) == ["index/all/00000", "index/all/00001"]
    assert folder in store._listings
    assert await store.list_keys("index/all/", "index/all/00599", 2) == [
        "index/all/00600",
        "index/all/00601",
    ]
    assert await store.list_keys("index/all/", "index/alk") == [
        f"index/all/{n}" for n in names[:1000]
    ]
    assert await store.list_keys("index/all/", "index/alm") == []
    await store.put("index/all/00599x", b"")  # the directory's mtime moves
    assert await store.list_keys("index/all/", "index/all/00599", 2) == [
        "index/all/00599x",
        "index/all/00600",
    ]
    await store.delete("index/all/00600")
    assert await store.list_keys("index/all/", "index/all/00599x", 1) == ["index/all/00601"]
