"""Marketplace test helpers: image facts for given bytes, images stored in a
real storage service, endorser keyrings."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats
from google.protobuf.duration_pb2 import Duration
from support import storage_stub

from kiln_api.storage.v1 import storage_pb2 as pb
from kiln_common.events import JetStreamPublisher
from kiln_market import ImageFacts, Keyring, generate_endorser
from kiln_publisher.market import Market
from kiln_publisher.settings import PublisherSettings

ENDORSER = "ops@example.org"


def facts_for(
    data: bytes,
    *,
    title: str = "Debian 12 web server",
    os: str = "debian",
    os_version: str = "12",
    arch: str = "x86_64",
    locations: tuple[str, ...] = ("https://storage.example.org/artifacts/a/web.qcow2",),
    artifact_id: str = "01artifact",
    description: str = "nginx on bookworm",
) -> ImageFacts:
    return ImageFacts(
        artifact_id=artifact_id,
        size=len(data),
        md5=hashlib.md5(data).hexdigest(),
        sha1=hashlib.sha1(data).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
        sha512=hashlib.sha512(data).hexdigest(),
        format="qcow2",
        compression="",
        os=os,
        os_version=os_version,
        arch=arch,
        hypervisor="kvm",
        title=title,
        description=description,
        creator="kiln build 01build",
        locations=locations,
        sbom_sha256=hashlib.sha256(b"sbom" + data).hexdigest(),
    )


def endorser_ring(tmp: Path, *emails: str) -> Keyring:
    """A keyring that signs for each email (generated under tmp)."""
    for email in emails or (ENDORSER,):
        generate_endorser(tmp / f"{email}.json", email)
    return Keyring.load(tmp)


def public_only(ring: Keyring) -> Keyring:
    """What an offline verifier holds: the public halves."""
    public = Keyring()
    public.merge(ring.to_document(private=False), "test")
    return public


IMAGE_LABELS = {"name": "web", "version": "1.0", "format": "qcow2"}


async def store(address: str, data: bytes, labels: dict[str, str]) -> pb.Artifact:
    """Uploads data to the storage service with these labels."""
    async with storage_stub(address) as stub:

        async def requests() -> AsyncIterator[pb.UploadRequest]:
            yield pb.UploadRequest(header=pb.UploadHeader(labels=labels))
            yield pb.UploadRequest(chunk=data)

        artifact: pb.Artifact = await stub.Upload(requests())
        return artifact


async def stored_image(
    address: str, data: bytes, labels: dict[str, str] | None = None, sbom: bytes = b""
) -> ImageFacts:
    """Uploads data to the storage service: facts whose location is its real
    download URL (and whose sbom_sha256 is sbom's, when given)."""
    artifact = await store(address, data, labels or IMAGE_LABELS)
    async with storage_stub(address) as stub:
        week = Duration(seconds=7 * 24 * 3600)
        reply = await stub.GetDownloadUrl(pb.GetDownloadUrlRequest(id=artifact.id, expires_in=week))
    facts = facts_for(data, locations=(reply.url,), artifact_id=artifact.id)
    if sbom:
        facts = replace(facts, sbom_sha256=hashlib.sha256(sbom).hexdigest())
    sums = artifact.checksums
    assert (facts.sha256, facts.sha1, facts.md5) == (sums.sha256, sums.sha1, sums.md5)
    return facts


@asynccontextmanager
async def market(url: str, keys: Keyring, name: str = "publisher-1") -> AsyncIterator[Market]:
    """One publisher replica's marketplace: its own NATS connection and event publisher."""
    events = await JetStreamPublisher.connect(url, name)
    nc = await nats.connect(url)
    try:
        yield Market(nc.jetstream(), keys, events)
    finally:
        await events.close()
        await nc.close()


def publisher_settings(
    tmp: Path, storage: str, nats_url: str, **overrides: Any
) -> PublisherSettings:
    """A publisher on free ports with the keyring under tmp/keys, no endorser
    keys, no clouds and no auto-publish; overrides name the rest."""
    fields: dict[str, Any] = {
        "grpc_bind": "127.0.0.1:0",
        "http_port": 0,
        "storage": storage,
        "nats_url": nats_url,
        "keyring_dir": tmp / "keys",
        "endorser_key_dir": tmp / "no-keys",
        "clouds_yaml": tmp / "no-clouds.yaml",
        "auto_publish": False,
        "shutdown_grace": 1.0,
    }
    return PublisherSettings(**{**fields, **overrides})
