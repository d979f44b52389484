"""Fixtures shared by every tier. Servers are real (nats-server, SeaweedFS,
Keystone, Glance), started on free loopback ports, awaited until ready, and
stopped on every path."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support import CACHE_MAX_GIB, REPO

from kiln_devstack.devservers import (
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

# The suite's disk use, in the summary (tests/disk_watch.py).
pytest_plugins = ["disk_watch"]


def pytest_configure(config: pytest.Config) -> None:
    # Every builder service the tests start (kiln up, the README demo) inherits it.
    os.environ.setdefault("KILN_BUILDER_CACHE_MAX_GIB", CACHE_MAX_GIB)
    # Never the user's ~/.kiln: `kiln-builder bake` would share layers with a
    # `kiln up` stack running there (a corrupted layer came back from it, cached).
    os.environ["KILN_HOME"] = tempfile.mkdtemp(prefix="kiln-test-home-")
    os.environ.pop("KILN_STORAGE", None)
    # Nor the user's kiln configuration file (a context would aim the tests'
    # `kiln` calls elsewhere); tests of the file name their own.
    os.environ["KILN_CONFIG"] = os.devnull
    for name in ("KILN_CONTEXT", "KILN_BUILDER", "KILN_PUBLISHER", "KILN_TOKEN", "KILN_CA_FILE"):
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.get("KILN_HOME", "/nonexistent"), ignore_errors=True)


@pytest.fixture(autouse=True)
def own_kiln_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test a KILN_HOME of its own (a test that starts a stack sets its own)."""
    home = tmp_path / "kiln-home"
    monkeypatch.setenv("KILN_HOME", str(home))
    return home


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


@pytest.fixture(scope="session")
def glance_noauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glance]:
    """A Glance without Keystone, as standalone Glance set-ups run it: every
    caller is its one project (kiln_devstack.devservers.glance_noauth)."""
    base = tmp_path_factory.mktemp("glance-noauth")
    server = start_glance(base, base / "gunicorn.log", None, schema_cache=OPENSTACK_SCHEMAS)
    with stopping(server.pid):
        yield server
