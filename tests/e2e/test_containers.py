"""The service images, run with testcontainers through podman's Docker API
(tests/containers_support.py), set up as deploy/k8s runs them.

Each image: its OCI labels (version, revision, source), the user its service
runs as, gRPC health SERVING (the time from start to SERVING is printed with
the image's size: run with -s to see them), its own HEALTHCHECK healthy, its
own work, and a clean stop on SIGTERM (exit status 0 within its grace).

- storage: locked down (read-only root, no capabilities), ports published on
  127.0.0.1; an upload downloads over HTTP, the same bytes.
- publisher: on the host's network (NATS and storage on loopback); an upload
  published to the marketplace, signed, and listed on the HTML catalogue page.
- builder: privileged with the host's /dev and /dev/kvm, on the host's
  network; its tools and libvirtd are there; a real build of
  tests/data/recipes/minimal.yaml (no boot test) runs in builder #1, which
  gets SIGTERM while the build runs: it exits 0 and the build is back in the
  queue; builder #2 takes it and stores the image. The layer cache is a
  directory under .cache (seeded with the suite's bookworm bootstrap layer),
  so a run after the first reuses what the previous one made.

The images come from tests/images_support.ensure_images() (podman's layer cache:
seconds when nothing changed). `make smoke-images` runs this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from containers_support import (
    KilnContainer,
    healthcheck,
    image_facts,
    image_id,
    podman_api,
    stop_with_sigterm,
    wait_serving,
    writable_by,
)
from images_support import TEST_TIMEOUT, ensure_images, image, version
from support import REPO, bookworm_bootstrap_layer, build_events, wait_until

from kiln_builder.service import queue
from kiln_builder.service.records import BuildRecords
from kiln_client import BuilderClient, PublisherClient, StorageClient
from kiln_common.builds import Build, BuildState, StepState
from kiln_common.proc import run_sync
from kiln_common.publications import (
    MarketplaceTarget,
    Publication,
    PublicationState,
    PublishRequest,
)
from kiln_devstack.devservers import Nats, free_port
from kiln_recipe.submission import recipe_source

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(TEST_TIMEOUT)]

KILN_UID = 10001  # storage and publisher (their Containerfiles)
# Settings as deploy/k8s gives storage and publisher: non-root, read-only root,
# no capabilities, no new privileges (and a tmpfs on /tmp, the one writable place).
LOCKED = {"read_only": True, "cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}
GRACE = 30.0  # storage and publisher: their 10 s shutdown grace, and room
BUILDER_GRACE = 60.0  # deploy/k8s/builder: terminationGracePeriodSeconds
# The builder's layer cache, kept between runs (the bootstrap layer is ~100 MB).
BUILDER_CACHE = REPO / ".cache/containers/builder-cache"
RECIPE = REPO / "tests/data/recipes/minimal.yaml"


def head() -> str:
    """The commit this tree is at: what build-images.sh labels the images with."""
    return run_sync(["git", "rev-parse", "HEAD"], cwd=REPO).stdout.strip()


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    """Each service's image by id, taken as soon as it is built: its tag may
    move meanwhile (another checkout on this machine building its own)."""
    return {service: image_id(ref) for service, ref in ensure_images().items()}


@pytest.fixture(scope="module")
def docker_host(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with podman_api(tmp_path_factory.mktemp("podman-api")) as url:
        yield url


def report(service: str, ref: str, figures: str) -> None:
    print(f"\n[images] {image(service)} ({ref[:12]}): {figures}", flush=True)


def check_image(service: str, ref: str) -> int:
    """The image's labels and HEALTHCHECK; returns its size in bytes."""
    facts = image_facts(ref)
    labels = facts.labels
    assert labels["org.opencontainers.image.title"] == f"kiln-{service}"
    assert labels["org.opencontainers.image.version"] == version(service)
    # The commit this tree is at (a tag another checkout moved would say another).
    assert labels["org.opencontainers.image.revision"] == head(), labels
    assert labels["org.opencontainers.image.source"], labels  # a URL, or "unknown"
    assert facts.healthcheck[-4:] == ["-m", "kiln_common.health_probe", "--service", service]
    return facts.size


@dataclass
class Started:
    container: KilnContainer
    address: str  # host:port of its gRPC API, from the host
    serving_after: float  # seconds from the start request to SERVING


@contextlib.contextmanager
def started(container: KilnContainer, address: str) -> Iterator[Started]:
    """The container started, SERVING at address; removed when the block ends."""
    start = time.monotonic()
    with container:
        wait_serving(container, address)
        yield Started(container, address, time.monotonic() - start)


@contextlib.contextmanager
def storage(ref: str, where: Path) -> Iterator[tuple[Started, str]]:
    """The storage container, locked down, its ports on 127.0.0.1; yields it
    and its HTTP base URL."""
    grpc_port = free_port()
    http_port = free_port({grpc_port})
    http = f"http://127.0.0.1:{http_port}"
    container = (
        KilnContainer(ref)
        .publish_on_loopback(50051, grpc_port)
        .publish_on_loopback(8081, http_port)
        .with_env("KILN_STORAGE_PUBLIC_URL", http)
        .with_volume_mapping(
            writable_by(where / "storage", KILN_UID), "/var/lib/kiln/storage", "rw"
        )
        .with_tmpfs_mount("/tmp")
        .with_kwargs(**LOCKED)
    )
    with started(container, f"127.0.0.1:{grpc_port}") as running:
        yield running, http


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return int(reply.status), reply.read()


def upload(address: str, where: Path, size: int = 256 * 1024) -> tuple[str, str, bytes]:
    """Random bytes stored through storage's gRPC API: (artifact id, download URL, bytes)."""
    data = secrets.token_bytes(size)
    path = where / "upload.bin"
    path.write_bytes(data)
    with StorageClient(address) as client:
        artifact = client.push(path, {"name": "containers", "format": "raw"})
        return artifact.id, client.url(artifact.id), data


def test_storage_image_serves_stores_and_stops_on_sigterm(
    images: dict[str, str], docker_host: str, tmp_path: Path
) -> None:
    ref = images["storage"]
    size = check_image("storage", ref)
    with storage(ref, tmp_path) as (running, _http):
        container = running.container
        assert container.process_uid() == KILN_UID
        assert healthcheck(container) == "healthy"
        _, url, data = upload(running.address, tmp_path)
        assert url.startswith("http://127.0.0.1:")
        assert http_get(url) == (200, data)
        stopped = stop_with_sigterm(container, GRACE)
        assert stopped.status == 0, container.tail()
    report("storage", ref, f"{size / 1e6:.0f} MB, SERVING {running.serving_after:.1f}s after "
           f"start, stopped on SIGTERM in {stopped.seconds:.1f}s")  # fmt: skip


def publish_entry(publisher: str, artifact_id: str, timeout: float = 60) -> str:
    """Publishes the artifact to the marketplace (signed by the local endorser,
    whose key the publisher made on its volume); the entry's identifier."""
    request = PublishRequest(artifact_id=artifact_id, marketplace=MarketplaceTarget(title="Kiln"))
    with PublisherClient(publisher) as client:
        started = client.publish(request)

        def ended() -> Publication | None:
            found = client.publication(started.id)
            return (
                found if found.state in (PublicationState.DONE, PublicationState.FAILED) else None
            )

        pub = wait_until("the publication to end", ended, timeout=timeout, interval=0.5)
    assert pub.state == PublicationState.DONE and pub.results, [r.error for r in pub.results]
    return str(pub.results[0].entry_identifier)


def test_publisher_image_publishes_an_entry_and_stops_on_sigterm(
    images: dict[str, str], docker_host: str, nats_server: Nats, tmp_path: Path
) -> None:
    ref = images["publisher"]
    size = check_image("publisher", ref)
    grpc_port = free_port()
    http_port = free_port({grpc_port})
    with storage(images["storage"], tmp_path) as (store, _http):
        container = (
            KilnContainer(ref)
            .with_envs(
                KILN_PUBLISHER_GRPC_BIND=f"127.0.0.1:{grpc_port}",
                KILN_PUBLISHER_HEALTH_BIND="",  # the host's network: no fixed port
                KILN_PUBLISHER_HTTP_HOST="127.0.0.1",
                KILN_PUBLISHER_HTTP_PORT=str(http_port),
                KILN_PUBLISHER_NATS_URL=nats_server.url,
                KILN_PUBLISHER_STORAGE=store.address,
                KILN_PUBLISHER_LOCAL_ENDORSER="containers@example.org",
            )
            .with_volume_mapping(
                writable_by(tmp_path / "publisher", KILN_UID), "/var/lib/kiln/publisher", "rw"
            )
            .with_tmpfs_mount("/tmp")
            .with_kwargs(network_mode="host", **LOCKED)
        )
        with started(container, f"127.0.0.1:{grpc_port}") as running:
            assert container.process_uid() == KILN_UID
            assert healthcheck(container) == "healthy"
            artifact_id, _, _ = upload(store.address, tmp_path)
            identifier = publish_entry(running.address, artifact_id)
            status, page = http_get(f"http://127.0.0.1:{http_port}/")
            assert status == 200 and b"<html" in page.lower()
            assert identifier.encode() in page, "the catalogue page does not list the entry"
            stopped = stop_with_sigterm(container, GRACE)
            assert stopped.status == 0, container.tail()
    report("publisher", ref, f"{size / 1e6:.0f} MB, SERVING {running.serving_after:.1f}s after "
           f"start, stopped on SIGTERM in {stopped.seconds:.1f}s")  # fmt: skip


# ---- builder -------------------------------------------------------------------------


def seeded_builder_cache() -> Path:
    """BUILDER_CACHE, holding (hard links to) the suite's bookworm bootstrap
    layer: the container's build starts from it, as the host's tests do."""
    layers = BUILDER_CACHE / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    for layer in bookworm_bootstrap_layer():
        with contextlib.suppress(FileExistsError):
            os.link(layer, layers / layer.name)
    return BUILDER_CACHE


def builder(
    ref: str, name: str, address: str, nats_url: str, storage: str, where: Path
) -> KilnContainer:
    """A builder container as deploy/k8s/builder runs one: privileged, the
    host's /dev (loop devices appear there) and /dev/kvm, its work dir, /tmp and
    outbox on host directories, its layer cache the persistent one."""
    dirs = {d: where / f"{name}-{d}" for d in ("work", "tmp", "outbox")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return (
        KilnContainer(ref)
        .with_envs(
            KILN_BUILDER_GRPC_BIND=address,
            KILN_BUILDER_HEALTH_BIND="",  # the host's network: no fixed port
            KILN_BUILDER_NATS_URL=nats_url,
            KILN_BUILDER_STORAGE=storage,
            KILN_BUILDER_WORKER_NAME=name,
            KILN_BUILDER_CACHE_MAX_GIB="4",
            # Boot tests stay on, so it starts its libvirtd (the build skips its own).
            # One machine, as `kiln up` runs it: no cluster networks to keep the
            # sandbox from; the mirror may be on a private network.
            KILN_BUILDER_CLUSTER_NETWORKS="[]",
            KILN_BUILDER_EGRESS_ALLOW_PRIVATE="true",
        )
        .with_volume_mapping("/dev", "/dev", "rw")
        .with_volume_mapping(BUILDER_CACHE, "/var/cache/kiln", "rw")
        .with_volume_mapping(dirs["work"], "/var/tmp/kiln", "rw")
        .with_volume_mapping(dirs["tmp"], "/tmp", "rw")
        .with_volume_mapping(dirs["outbox"], "/var/lib/kiln/outbox", "rw")
        .with_kwargs(privileged=True, network_mode="host", devices=["/dev/kvm:/dev/kvm:rwm"])
    )


def record(nats_url: str, build_id: str) -> tuple[Build, int]:
    """The build's record in NATS (no builder's API needed) and how many
    messages wait in the build queue."""

    async def read() -> tuple[Build, int]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            found = await (await BuildRecords.open(js)).get(build_id)
            waiting = (await js.stream_info(queue.STREAM)).state.messages
            return found, int(waiting)
        finally:
            await nc.close()

    return asyncio.run(read())


@pytest.mark.build
def test_builder_image_hands_a_running_build_back_on_sigterm_and_another_finishes_it(
    images: dict[str, str], docker_host: str, nats_server: Nats, tmp_path: Path
) -> None:
    ref = images["builder"]
    size = check_image("builder", ref)
    seeded_builder_cache()
    ports = {name: free_port() for name in ("one", "two")}
    addresses = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    with storage(images["storage"], tmp_path) as (store, _http):
        one = builder(ref, "one", addresses["one"], nats_server.url, store.address, tmp_path)
        with started(one, addresses["one"]) as first:
            assert one.process_uid() == 0  # root and privileged by design
            assert healthcheck(one) == "healthy"
            tools = ("mmdebstrap", "bwrap", "qemu-img", "qemu-system-x86_64", "virsh", "mkfs.ext4")
            one.run("sh", "-c", " && ".join(f"command -v {t} >/dev/null" for t in tools))
            versions = one.run("virsh", "-c", "qemu:///system", "version", "--daemon")
            assert "Running against daemon" in versions, versions  # the boot test's libvirtd

            with BuilderClient(first.address) as client:
                build_id = client.submit(recipe_source(RECIPE)[1], skip_boot_test=True).id

                def working() -> Build | None:
                    found = client.get(build_id)
                    busy = any(s.state == StepState.RUNNING for s in found.steps)
                    return found if found.state == BuildState.RUNNING and busy else None

                running = wait_until("builder one to run a step of the build", working,
                                     timeout=120, interval=0.2)  # fmt: skip
                assert running.worker.startswith("one") and running.attempt == 1
                step = next(s.name for s in running.steps if s.state == StepState.RUNNING)
            stopped = stop_with_sigterm(one, BUILDER_GRACE)
            assert stopped.status == 0, one.tail()

        handed_back, waiting = record(nats_server.url, build_id)
        assert handed_back.state == BuildState.QUEUED, handed_back
        # Handed back by its attempt (no worker holds it), not failed.
        assert handed_back.attempt == 1 and not handed_back.worker and handed_back.error is None
        assert waiting == 1  # its message, not acked: back in the queue

        two = builder(ref, "two", addresses["two"], nats_server.url, store.address, tmp_path)
        built_at = time.monotonic()
        with started(two, addresses["two"]) as second, BuilderClient(second.address) as client:

            def ended() -> Build | None:
                found = client.get(build_id)
                return found if found.state not in (BuildState.QUEUED, BuildState.RUNNING) else None

            final = wait_until("builder two to finish the build", ended, timeout=600, interval=1)
            took = time.monotonic() - built_at
            assert final.state == BuildState.SUCCEEDED, (final.error, two.tail())
            # Attempt 1 by builder one, attempt 2 by two: builder one, shutting
            # down, takes nothing more (the slot its stopped build frees is not
            # used to fetch the message just handed back, which would hold it
            # unacked for the ack wait).
            starts = [(e["data"]["attempt"], e["data"]["worker"].split(":")[0])
                      for e in build_events(nats_server.url, build_id)
                      if e["type"] == "build.started"]  # fmt: skip
            assert starts == [(1, "one"), (2, "two")], starts
            assert final.attempt == 2 and final.worker.startswith("two")
            # Its base from the persistent layer cache, not bootstrapped again.
            bootstrap = [s for s in final.steps if s.name == "bootstrap"]
            assert bootstrap and bootstrap[0].cached, final.steps
            images_built = [a for a in final.artifacts if a.kind == "image" and a.format == "qcow2"]
            assert images_built, final.artifacts
            with StorageClient(store.address) as storage_client:
                stored = {a.id: a for a in storage_client.list({"build-id": build_id})}
            for artifact in images_built:
                assert artifact.artifact_id in stored
                assert stored[artifact.artifact_id].size > 1_000_000  # a bootable disk, not a stub
            assert record(nats_server.url, build_id)[1] == 0  # acked: gone from the queue
            assert stop_with_sigterm(two, BUILDER_GRACE).status == 0, two.tail()
    report("builder", ref, f"{size / 1e6:.0f} MB, SERVING {first.serving_after:.1f}s after start; "
           f"SIGTERM in step {step}: exit 0 in {stopped.seconds:.1f}s, build handed back; "
           f"builder two finished it (attempt {final.attempt}) in {took:.0f}s")  # fmt: skip
