"""Fixtures shared by every tier. Servers are real (nats-server, SeaweedFS,
Keystone, Glance), started on free loopback ports, awaited until ready, and
stopped on every path."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support import CACHE_MAX_GIB

from kiln_common.devservers import (
    Glance,
    Keystone,
    Nats,
    Seaweed,
    start_glance,
    start_keystone,
    start_nats,
    start_seaweed,
    stopping,
    write_clouds_yaml,
)
from kiln_storage.app import StorageApp, build
from kiln_storage.settings import StorageSettings

GiB = 1 << 30
REPO = Path(__file__).resolve().parent.parent


# ---- the suite's disk use -----------------------------------------------------------------
# CI's free disk varies from run to run and a full disk fails every test after it,
# so each test's effect is sampled and the summary names the low point.


class DiskWatch:
    """Free space on the filesystems of the repo's cache and of pytest's basetemp,
    sampled after each test's teardown (module fixtures end in the last one's)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.fs: dict[int, list[str]] = {}  # a filesystem's device: the paths on it
        for name, path in paths.items():
            self.fs.setdefault(os.stat(path).st_dev, []).append(name)
        self.start = {dev: self._free(dev) for dev in self.fs}
        self.low = {dev: (free, "the start") for dev, free in self.start.items()}

    def _free(self, dev: int) -> int:
        path = self.paths[self.fs[dev][0]]
        while not path.exists():  # pytest removes an empty basetemp at the end
            path = path.parent
        return shutil.disk_usage(path).free

    def sample(self, nodeid: str) -> None:
        for dev in self.fs:
            free = self._free(dev)
            if free < self.low[dev][0]:
                self.low[dev] = (free, nodeid)

    def lines(self) -> list[str]:
        lines = []
        for dev, names in self.fs.items():
            (low, when), start = self.low[dev], self.start[dev]
            lines.append(
                f"the filesystem of {' and '.join(names)}: {start / GiB:.1f} GiB free at the "
                f"start, {self._free(dev) / GiB:.1f} at the end, lowest {low / GiB:.1f} "
                f"(the suite held {(start - low) / GiB:.1f} GiB at most) after {when}"
            )
        for name, path in self.paths.items():
            lines.append(f"{name} ({path}) holds {_disk_use(path) / GiB:.1f} GiB at the end")
        return lines


def _disk_use(root: Path) -> int:
    """Bytes allocated under root (sparse files count what they hold)."""
    total = 0
    for parent, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
    return total


_disk: DiskWatch | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Every builder service the tests start (kiln up, the README demo) inherits it.
    os.environ.setdefault("KILN_BUILDER_CACHE_MAX_GIB", CACHE_MAX_GIB)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _disk
    basetemp = session.config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    (REPO / ".cache").mkdir(exist_ok=True)
    _disk = DiskWatch({"the repo's .cache": REPO / ".cache", "pytest's basetemp": basetemp})


def pytest_runtest_logfinish(nodeid: str) -> None:
    if _disk is not None:
        _disk.sample(nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _disk is not None:
        terminalreporter.section("disk use")
        for line in _disk.lines():
            terminalreporter.write_line(line)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Nats]:
    server = start_nats(tmp_path / "nats", tmp_path / "nats.log")
    with stopping(server.pid):
        yield server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """One SeaweedFS for the session (each test uses its own bucket)."""
    base = tmp_path_factory.mktemp("seaweed")
    server = start_seaweed(base / "data", base / "weed.log", "kilntest", secrets.token_hex(16))
    with stopping(server.pid):
        yield server


OPENSTACK_SCHEMAS = REPO / ".cache" / "openstack"


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    """One Keystone for the session, with projects kiln-a and kiln-b (a member
    user each) besides admin."""
    base = tmp_path_factory.mktemp("keystone")
    server = start_keystone(base, base / "gunicorn.log", schema_cache=OPENSTACK_SCHEMAS)
    with stopping(server.pid):
        yield server


@pytest.fixture(scope="session")
def glance(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone) -> Iterator[Glance]:
    """One Glance for the session (region RegionOne), import methods
    glance-direct and web-download enabled."""
    base = tmp_path_factory.mktemp("glance")
    server = start_glance(base, base / "gunicorn.log", keystone, schema_cache=OPENSTACK_SCHEMAS)
    with stopping(server.pid):
        yield server


@pytest.fixture(scope="session")
def glance_legacy(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone) -> Iterator[Glance]:
    """A second Glance, same Keystone, region RegionTwo, with import disabled
    (only the legacy upload)."""
    base = tmp_path_factory.mktemp("glance-legacy")
    server = start_glance(
        base, base / "gunicorn.log", keystone, "RegionTwo", (), schema_cache=OPENSTACK_SCHEMAS
    )
    with stopping(server.pid):
        yield server


@pytest.fixture(scope="session")
def clouds_yaml(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone) -> Path:
    """clouds.yaml with clouds admin, kiln-a and kiln-b (one project each),
    region RegionOne first (the default), RegionTwo when glance_legacy runs."""
    path = tmp_path_factory.mktemp("openstack") / "clouds.yaml"
    return write_clouds_yaml(path, keystone, ("RegionOne", "RegionTwo"))


@pytest.fixture
def bucket() -> str:
    return f"kiln-test-{secrets.token_hex(4)}"


StorageFactory = Callable[..., AbstractAsyncContextManager[tuple[StorageApp, str]]]


@pytest.fixture
def storage_service(tmp_path: Path) -> StorageFactory:
    """Starts the storage service in-process on free ports; yields (app, grpc address)."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[tuple[StorageApp, str]]:
        settings = StorageSettings(
            **{
                "grpc_bind": "127.0.0.1:0",
                "http_port": 0,
                "fs_root": tmp_path / "store",
                "shutdown_grace": 1.0,
                **overrides,
            }
        )
        app = await build(settings)
        try:
            port = await app.grpc.start()
            yield app, f"127.0.0.1:{port}"
        finally:
            await app.stop()

    return start
