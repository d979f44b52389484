"""Marketplace test helpers: image facts for given bytes, endorser keyrings."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kiln_publisher.market import ImageFacts, Keyring, generate_endorser

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
