"""The package manifest of an image root, read from dpkg's database, and its SPDX 2.3
JSON document. The document is deterministic: the same packages, name, seed and
epoch give the same bytes, so it can sit beside reproducible images."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kiln_builder.imageroot import ImageRoot
from kiln_common.errors import FailedPrecondition

DPKG_STATUS = "var/lib/dpkg/status"
MAX_STATUS = 256 << 20  # a status file of 10,000 packages is about 30 MB
TOOL = "kiln-builder"
# documentNamespace only has to be a unique URI; it is never fetched.
NAMESPACE_BASE = "https://kiln.invalid/spdx"
_SOURCE = re.compile(r"^(?P<name>\S+)(?:\s+\((?P<version>[^)\s]+)\))?$")
_SPDXID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    source_name: str
    source_version: str


def package_manifest(rootfs: Path) -> list[Package]:
    """The packages dpkg has installed in rootfs, sorted by name, architecture,
    version. The database is read inside the image (imageroot): a link there
    leads to the image's own files, never the build host's."""
    with ImageRoot(rootfs) as tree:
        text = tree.read_text(DPKG_STATUS, limit=MAX_STATUS)
    if text is None:
        raise FailedPrecondition(f"no dpkg database in the image (/{DPKG_STATUS} is missing)")
    packages = (_package(fields) for fields in parse_control(text) if _installed(fields))
    return sorted(packages, key=_order)


def _order(package: Package) -> tuple[str, str, str]:
    return package.name, package.architecture, package.version


def parse_control(text: str) -> Iterator[dict[str, str]]:
    """Paragraphs of a deb822 file as {field: value}; continuation lines are
    joined with newlines. Field names are case-insensitive, so they are lower-cased."""
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:  # a continuation of the previous field
                fields[last] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip().lower()
            fields[last] = value.strip()
    if fields:
        yield fields


def _installed(fields: dict[str, str]) -> bool:
    # "want flag status", e.g. "install ok installed"; "deinstall ok config-files"
    # is a removed package whose configuration files remain.
    status = fields.get("status", "").split()
    return "package" in fields and len(status) == 3 and status[2] == "installed"


def _package(fields: dict[str, str]) -> Package:
    name, version = fields["package"], fields.get("version", "")
    source_name, source_version = name, version
    if source := fields.get("source"):
        match = _SOURCE.match(source)
        if match:
            source_name = match["name"]
            # "Source: name" alone means the source version equals the binary's.
            source_version = match["version"] or version
    return Package(name, version, fields.get("architecture", ""), source_name, source_version)


def spdx_document(
    packages: Iterable[Package],
    *,
    name: str,
    namespace_seed: str,
    created_epoch: int,
    distro: str = "debian",
) -> dict[str, Any]:
    """An SPDX 2.3 document: the image as one package that CONTAINS each deb."""
    image_id = "SPDXRef-Image"
    entries = [_spdx_package(p, distro) for p in sorted(set(packages), key=_order)]
    image = {
        "SPDXID": image_id,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
    }
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": namespace(name, namespace_seed),
        "creationInfo": {"created": _timestamp(created_epoch), "creators": [f"Tool: {TOOL}"]},
        "packages": [image, *entries],
        "relationships": [
            _relationship("SPDXRef-DOCUMENT", "DESCRIBES", image_id),
            *(_relationship(image_id, "CONTAINS", e["SPDXID"]) for e in entries),
        ],
    }


def namespace(name: str, seed: str) -> str:
    """A unique URI per document, stable for the same build inputs (the seed)."""
    digest = uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE_BASE}/{seed}")
    return f"{NAMESPACE_BASE}/{quote(name, safe='')}-{digest}"


def spdx_id(package: Package) -> str:
    """Stable and unique per (name, architecture), whatever the version: readable
    name first, a short hash because sanitising could make two names collide."""
    key = hashlib.sha256(f"{package.name}:{package.architecture}".encode()).hexdigest()[:12]
    return f"SPDXRef-Package-deb-{_SPDXID_UNSAFE.sub('-', package.name)}-{key}"


def purl(package: Package, distro: str = "debian") -> str:
    name = quote(package.name, safe="")
    version = quote(package.version, safe="")  # an epoch's ":" must be encoded
    return f"pkg:deb/{distro}/{name}@{version}?arch={quote(package.architecture, safe='')}"


def _spdx_package(package: Package, distro: str) -> dict[str, Any]:
    return {
        "SPDXID": spdx_id(package),
        "name": package.name,
        "versionInfo": package.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "supplier": "NOASSERTION",
        "sourceInfo": f"built from source package {package.source_name} {package.source_version}",
        "externalRefs": [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(package, distro),
            }
        ],
    }


def _relationship(element: str, kind: str, related: str) -> dict[str, str]:
    return {"spdxElementId": element, "relationshipType": kind, "relatedSpdxElement": related}


def _timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_sbom(path: Path, doc: dict[str, Any]) -> None:
    """Writes the document with sorted keys, 2-space indent and a final newline,
    through a temporary name so a reader never sees half a file."""
    text = json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    tmp = path.with_name(f".{path.name}.part")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
