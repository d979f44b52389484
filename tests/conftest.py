"""Fixtures shared by every tier. Servers are real (nats-server, SeaweedFS),
started on free loopback ports, awaited until ready, and stopped on every path."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kiln_common.devservers import Nats, Seaweed, start_nats, start_seaweed, stopping
from kiln_storage.app import StorageApp, build
from kiln_storage.settings import StorageSettings


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
