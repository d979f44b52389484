"""Helpers for tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.server
import inspect
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
import nats
import pytest
from minio import Minio

from kiln_api.storage.v1 import storage_pb2_grpc
from kiln_common.grpc_server import CHANNEL_OPTIONS
from kiln_common.proc import run_sync
from kiln_devstack.devservers import Seaweed

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(
    what: str, check: Callable[[], T | bool | None], timeout: float, interval: float = 0.05
) -> T:
    """Calls check every interval seconds until it returns something truthy, and
    returns that. Raises AssertionError naming what after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return cast(T, found)
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def await_until(
    what: str,
    check: Callable[[], Awaitable[T | bool | None] | T | bool | None],
    timeout: float,  # noqa: ASYNC109 (a deadline for the polling, not for one call)
    interval: float = 0.05,
) -> T:
    """wait_until for async tests: check may be a coroutine function; the loop
    sleeps with asyncio.sleep, so other tasks run meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return cast(T, found)
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def s3_client(server: Seaweed) -> Minio:
    return Minio(
        server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
        region="us-east-1",
    )


def s3_settings(server: Seaweed, bucket: str, **extra: Any) -> dict[str, Any]:
    return {
        "backend": "s3",
        "s3_endpoint": server.endpoint,
        "s3_access_key": server.access_key,
        "s3_secret_key": server.secret_key,
        "s3_bucket": bucket,
        **extra,
    }


@asynccontextmanager
async def storage_stub(address: str) -> AsyncIterator[storage_pb2_grpc.StorageStub]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        yield storage_pb2_grpc.StorageStub(channel)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking test bytes."""
    return random.Random(seed).randbytes(size)


async def gather_bytes(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


def loops_under(root: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip().startswith(str(root.resolve())):
            found.append(backing.parent.parent.name)
    return found


def mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(str(root.resolve()))]


# Files above this size go when a module's scratch directory is released after a
# failure: images, layers and stored blobs, never the logs a reader needs.
BIG_FILE = 16 << 20


@contextlib.contextmanager
def scratch(request: pytest.FixtureRequest, name: str) -> Iterator[Path]:
    """A directory for a module- or session-scoped fixture, released when the
    fixture ends. pytest keeps tmp_path_factory's directories until the session
    ends, and the image tests' hold gigabytes each: kept side by side they filled
    CI's disk. After a failure in the module only the big files go, so its logs
    stay to read; anything still mounted or attached there is left alone (the
    test that leaked it fails its own check)."""
    factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    path = factory.mktemp(name)
    failed = request.session.testsfailed
    errored = False
    try:
        yield path
    except BaseException:
        errored = True  # the fixture's own set-up failed: not counted as a test yet
        raise
    finally:
        if not (mounts_under(path) or loops_under(path)):
            if errored or request.session.testsfailed > failed:
                for big in [p for p in path.rglob("*") if _is_big_file(p)]:
                    big.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)


def _is_big_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and path.stat().st_size > BIG_FILE


def qemus_using(path: Path) -> list[int]:
    """QEMU processes whose command line names something under path (the
    appliance VMs of vm isolation, which are processes, not libvirt domains)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"qemu-system-x86_64") and any(str(path).encode() in a for a in argv):
            found.append(int(proc.name))
    return found


def kiln_domains() -> list[str]:
    done = run_sync(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], check=False)
    return [n for n in done.stdout.split() if n.startswith("kiln-") and "test" not in n]


KILN = str(Path(sys.executable).parent / "kiln")


def kiln(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs the kiln command as a user would; never a traceback."""
    done = subprocess.run(
        [KILN, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"kiln {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    assert "Traceback" not in done.stderr
    return done


def schedule_run_now(env: dict[str, str], schedule_id: str) -> dict[str, object]:
    """`kiln schedule run`, then waits for that run to end; the run as
    `kiln schedule runs --json` lists it."""
    before = len(json.loads(kiln(env, "schedule", "runs", schedule_id, "--json").stdout))
    kiln(env, "schedule", "run", schedule_id)

    def ended() -> dict[str, object] | None:
        found = json.loads(kiln(env, "schedule", "runs", schedule_id, "--json").stdout)
        newest = found[0] if len(found) > before else None
        return newest if newest and newest["outcome"] != "running" else None

    run = wait_until("the run to end", ended, timeout=900, interval=2)
    assert run is not None
    return run


@contextlib.contextmanager
def stack_token(home: Path) -> Iterator[str]:
    """A `kiln up` stack requires identities: while this holds, this process's
    clients send its admin token (KILN_TOKEN), as the CLI does from home, and
    a `kiln-builder bake` it starts shares layers as the stack's builders do
    (KILN_BUILDER_TOKEN, its service token)."""
    tokens = {
        "KILN_TOKEN": (home / "token").read_text().strip(),
        "KILN_BUILDER_TOKEN": (home / "service-token").read_text().strip(),
    }
    before = {name: os.environ.get(name) for name in tokens}
    os.environ.update(tokens)
    try:
        yield tokens["KILN_TOKEN"]
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def kiln_up(where: Path, **settings: str) -> Iterator[dict[str, str]]:
    """`kiln up` with its home and the builder's workspaces under where, the
    shared layer cache, and settings as KILN_* variables; `kiln down` and the
    janitor afterwards, so a failed test leaves nothing mounted or attached."""
    environ = {
        **os.environ,
        "KILN_HOME": str(where / "home"),
        "KILN_CACHE": str(REPO / ".cache"),
        "KILN_BUILDER_WORK_ROOT": str(where / "work"),
        **settings,
    }
    for name in ("KILN_STORAGE", "KILN_BUILDER", "KILN_PUBLISHER"):
        environ.pop(name, None)
    try:
        kiln(environ, "up")
        with stack_token(where / "home"):
            yield environ
    finally:
        kiln(environ, "down", check=False)
        janitor = str(Path(sys.executable).parent / "kiln-builder")
        subprocess.run([janitor, "janitor", "--work-root", environ["KILN_BUILDER_WORK_ROOT"]],
                       capture_output=True, check=False)  # fmt: skip


# ---- NATS state, read the way an operator would (for fault and bad-input tests) --------


async def _stream_counts(url: str, field: str = "messages") -> dict[str, int]:
    nc = await nats.connect(url)
    try:
        infos = await nc.jetstream().streams_info()
        return {s.config.name: int(getattr(s.state, field)) for s in infos}
    finally:
        await nc.close()


def stream_counts(url: str) -> dict[str, int]:
    """Messages in every JetStream stream (records, recipes, queue, updates,
    events)."""
    return asyncio.run(_stream_counts(url))


def stream_last_seqs(url: str) -> dict[str, int]:
    """The last sequence of every JetStream stream: a request that stored
    nothing leaves these as they were, even where a count would not show it (a
    one-version KV record overwritten keeps its bucket's count)."""
    return asyncio.run(_stream_counts(url, "last_seq"))


async def events_about(url: str, subject: str) -> list[dict[str, Any]]:
    """Every event on the KILN_EVENTS stream about subject (a build id, an
    image id, an entry identifier), in stream order."""
    from kiln_common.events import STREAM, SUBJECT_PREFIX

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(SUBJECT_PREFIX + ">", ordered_consumer=True)
        found = []
        pending = int((await js.stream_info(STREAM)).state.messages)
        for _ in range(pending):
            msg = await sub.next_msg(timeout=5)
            event = json.loads(msg.data)
            if event.get("subject") == subject:
                found.append(event)
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


def build_events(url: str, build_id: str) -> list[dict[str, Any]]:
    """Every event on the KILN_EVENTS stream about build_id, in stream order
    (what a consumer of kiln.events.> would see)."""
    return asyncio.run(events_about(url, build_id))


def event_data(url: str, type_: str, subject: str) -> list[dict[str, Any]]:
    """The data of every event of type_ about subject, in stream order."""
    events = asyncio.run(events_about(url, subject))
    return [dict(e.get("data") or {}) for e in events if e.get("type") == type_]


def event_types(events: list[dict[str, Any]]) -> list[str]:
    return [str(e["type"]) for e in events]


def files_under(root: Path) -> set[str]:
    """Every file below root, relative: an upload refused stores none."""
    return set(file_states(root))


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    """{file below root, relative: (size, mtime in ns)}: what a request that
    stores nothing must neither add nor change."""
    if not root.exists():
        return {}
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            st = path.stat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


# ---- a `kiln up` stack, broken on purpose -------------------------------------------------


def kill_part(home: Path, part: str) -> int:
    """SIGKILLs one part of the `kiln up` stack under home (nats, storage or
    builder), as a crash would; returns its pid once it is gone."""
    from kiln_common.proc import pid_alive
    from kiln_devstack.stack import Stack

    stack = Stack.load(home)
    assert stack is not None, f"no stack under {home}"
    pid = stack.pids[part]
    os.kill(pid, signal.SIGKILL)
    wait_until(f"the {part} ({pid}) to go", lambda: not pid_alive(pid), timeout=30)
    return pid


def restart_dead_parts(env: dict[str, str]) -> dict[str, int]:
    """`kiln up` on a stack with dead parts: they start again on their ports.
    Returns the stack's pids afterwards."""
    from kiln_devstack.stack import Stack

    kiln(env, "up", timeout=180)
    stack = Stack.load(Path(env["KILN_HOME"]))
    assert stack is not None and stack.alive()
    return dict(stack.pids)


# ---- the layer cache builds share ---------------------------------------------------------

LAYERS = REPO / ".cache" / "kiln" / "layers"  # the builder's cache under KILN_CACHE=REPO/.cache
# The size every builder the tests start prunes that cache to (its layers; its
# downloaded bases are held to the same size apart). A layer is a whole root
# tree, about 240 MB, and most test recipes are one-offs: unbounded, one run
# left 9 GiB. Sixteen layers keep the bootstraps every build touches and a
# test's rebuild of its own recipe.
CACHE_MAX_GIB = "4"


def bookworm_bootstrap_layer() -> list[Path]:
    """The files of the cached bookworm bootstrap layer (made once if missing),
    the one every test recipe starts from: under its key of the recipe alone (a
    Bake given no mirror state) and under the key the builder service gives it,
    chained with the mirror suite's state as read now (kiln_builder.fingerprint).
    The same tree: a bootstrap from that mirror, linked under both names."""
    from kiln_builder.bootstrap import bootstrap, layer_key, spec_for
    from kiln_builder.engine import DEFAULT_EPOCH
    from kiln_builder.fingerprint import AptSource, release_digest
    from kiln_builder.layers import LayerStore

    spec = spec_for("debian", "bookworm", "amd64", None, DEFAULT_EPOCH)
    source = AptSource(spec.mirror.rstrip("/"), spec.release)

    async def ensure() -> str:
        store = LayerStore(LAYERS)
        if await store.fetch("bootstrap", spec.key()) is None:
            await bootstrap(spec, store.path("bootstrap", spec.key()))
            await store.adopt("bootstrap", spec.key())
        return layer_key(spec, ((source.part, await release_digest(source, None)),))

    served = asyncio.run(ensure())
    for suffix in (".tar.zst", ".sha256"):
        link = LAYERS / f"bootstrap-{served}{suffix}"
        with contextlib.suppress(FileExistsError):  # another test process linked it
            os.link(LAYERS / f"bootstrap-{spec.key()}{suffix}", link)
    return sorted(
        [*LAYERS.glob(f"bootstrap-{spec.key()}.*"), *LAYERS.glob(f"bootstrap-{served}.*")]
    )


def cache_with(layers: list[Path], cache_dir: Path) -> Path:
    """A builder cache dir holding only these layers (hard links, no copies):
    the steps after them really run, whatever earlier test runs cached."""
    (cache_dir / "layers").mkdir(parents=True, exist_ok=True)
    for layer in layers:
        os.link(layer, cache_dir / "layers" / layer.name)
    return cache_dir


class ImageServer:
    """Serves a directory over HTTP with Range support, counting connections and
    GETs; can cut its first answer short to show that a download resumes, and
    answer a path with a redirect. host: a loopback address to listen on."""

    def __init__(self, root: Path, host: str = "127.0.0.1", keep_alive: bool = False) -> None:
        self.root = root
        self.requests: list[dict[str, str]] = []
        self.connections = 0
        self.redirects: dict[str, str] = {}  # "/path" -> where a GET of it is sent
        self.cut_first_after: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                server.connections += 1
                super().setup()

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if server.cut_first_after is not None:
                    body, server.cut_first_after = body[: server.cut_first_after], None
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def gets(self, name: str) -> list[dict[str, str]]:
        return [r for r in self.requests if r["path"] == f"/{name}"]

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def glance_images(clouds_yaml: Path, name: str, cloud: str = "admin", **query: str) -> list[Any]:
    """The images of name as a real Glance lists them to cloud (hidden ones too),
    as JSON (openstacksdk is imported here: most tests never need it)."""
    import openstack
    import openstack.config

    config = openstack.config.OpenStackConfig(config_files=[str(clouds_yaml)])
    region = query.pop("region", "RegionOne")
    api = openstack.connection.Connection(config=config.get_one(cloud=cloud, region_name=region))
    try:
        found: list[Any] = []
        for hidden in ("false", "true"):
            params = {"name": name, "os_hidden": hidden, **query}
            found += api.image.get("/images", params=params).json()["images"]
        return found
    finally:
        api.close()


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


Metadata = tuple[tuple[str, str], ...]


def bearer(token: str | None) -> Metadata:
    """`authorization: Bearer <token>`; none for None (a call without a token)."""
    return (("authorization", f"Bearer {token}"),) if token is not None else ()


class Authed:
    """An aio stub whose every call carries the metadata (bearer(token), and
    what else a test sends: kiln-acting-for)."""

    def __init__(self, stub: Any, metadata: Metadata) -> None:
        self._stub, self._metadata = stub, metadata

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)
        return lambda request: method(request, metadata=self._metadata)


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """A blocking channel's calls, with `authorization: Bearer <token>`."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, d: Any) -> _CallDetails:
        metadata = [*(d.metadata or ()), self._header]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials,
                            d.wait_for_ready, d.compression)  # fmt: skip

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def stack_channel(address: str, token: str) -> grpc.Channel:
    """A blocking channel to a service of a `kiln up` stack, carrying its admin
    token (stack.token(); none for a stack without identities)."""
    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel
