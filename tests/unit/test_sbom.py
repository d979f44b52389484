"""The package manifest read from dpkg's status file, and its SPDX 2.3 document."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from kiln_builder.sbom import Package, package_manifest, spdx_document, write_sbom
from kiln_common.errors import FailedPrecondition

STATUS = """\
Package: adduser
Status: install ok installed
Priority: important
Architecture: all
Version: 3.134
Depends: passwd
Description: add and remove users and groups
 This package includes the 'adduser' and 'deluser' commands.
 Source: not-a-field (9.9)
 .
 Version: neither is this

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: glibc (2.36-9+deb12u4)
Version: 2.36-9+deb12u4
Conffiles:
 /etc/ld.so.conf.d/x86_64-linux-gnu.conf d4e7a7b88a71b5ffd9e2644e71a0cfab
Description: GNU C Library: Shared libraries

Package: old-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1
Conffiles:
 /etc/old-tool.conf 0123456789abcdef0123456789abcdef

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Source: glibc (2.36-9+deb12u4)
Version: 2.36-9+deb12u4

Package: broken
Status: install reinstreq half-installed
Architecture: amd64
Version: 0.1

Package: libstdc++6
Status: install ok installed
Architecture: amd64
Source: gcc-12
Version: 12.2.0-14

Package: x-tools
Status: hold ok installed
Architecture: amd64
Source: x (1.2)
Version: 1:1.2-3+b1
"""  # no blank line at the end: the last paragraph still counts

EPOCH = 1_700_000_000


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    status = tmp_path / "root/var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(STATUS)
    return tmp_path / "root"


def test_manifest_lists_installed_packages_with_their_sources(rootfs: Path) -> None:
    assert package_manifest(rootfs) == [
        Package("adduser", "3.134", "all", "adduser", "3.134"),
        Package("libc6", "2.36-9+deb12u4", "amd64", "glibc", "2.36-9+deb12u4"),
        Package("libc6", "2.36-9+deb12u4", "i386", "glibc", "2.36-9+deb12u4"),
        Package("libstdc++6", "12.2.0-14", "amd64", "gcc-12", "12.2.0-14"),
        Package("x-tools", "1:1.2-3+b1", "amd64", "x", "1.2"),
    ]


def test_a_missing_dpkg_database_is_an_error_not_an_empty_manifest(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="var/lib/dpkg/status"):
        package_manifest(tmp_path)


def _doc(packages: list[Package], seed: str = "seed-1") -> dict[str, Any]:
    return spdx_document(
        packages, name="web-debian-1.2.0", namespace_seed=seed, created_epoch=EPOCH
    )


def test_spdx_document_is_deterministic_and_sorted(rootfs: Path) -> None:
    packages = package_manifest(rootfs)
    shuffled = packages[:]
    random.Random(7).shuffle(shuffled)
    doc = _doc(packages)
    assert doc == _doc(shuffled) == _doc(packages + packages[:1])
    assert doc["spdxVersion"] == "SPDX-2.3"
    assert doc["dataLicense"] == "CC0-1.0"
    assert doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"  # from the epoch
    names = [(p["name"], p.get("versionInfo")) for p in doc["packages"]][1:]
    assert names == sorted(names)


def test_namespace_derives_from_the_seed(rootfs: Path) -> None:
    packages = package_manifest(rootfs)
    one, again, other = _doc(packages), _doc(packages), _doc(packages, seed="seed-2")
    assert one["documentNamespace"] == again["documentNamespace"] != other["documentNamespace"]
    assert str(one["documentNamespace"]).startswith("https://")


def test_packages_have_stable_unique_ids_and_purls(rootfs: Path) -> None:
    doc = _doc(package_manifest(rootfs))
    packages = {p["SPDXID"]: p for p in doc["packages"]}
    assert len(packages) == 6  # the image and five debs
    assert all(re.fullmatch(r"SPDXRef-[A-Za-z0-9.-]+", i) for i in packages)
    purls = sorted(
        ref["referenceLocator"]
        for p in packages.values()
        for ref in p.get("externalRefs", [])
        if ref["referenceType"] == "purl"
    )
    assert purls == [
        "pkg:deb/debian/adduser@3.134?arch=all",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64",
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=i386",
        "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64",
        "pkg:deb/debian/x-tools@1%3A1.2-3%2Bb1?arch=amd64",
    ]
    x_tools = next(p for p in packages.values() if p["name"] == "x-tools")
    assert x_tools["sourceInfo"] == "built from source package x 1.2"
    # An upgrade keeps the package's id, so two SBOMs can be compared by id.
    newer = _doc([Package("x-tools", "1:1.3-1", "amd64", "x", "1.3")])
    assert x_tools["SPDXID"] in {p["SPDXID"] for p in newer["packages"]}


def test_relationships_tie_every_package_to_the_image(rootfs: Path) -> None:
    doc = _doc(package_manifest(rootfs))
    relations = doc["relationships"]
    describes = {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES"}
    assert {**describes, "relatedSpdxElement": "SPDXRef-Image"} in relations
    contains = [r for r in relations if r["relationshipType"] == "CONTAINS"]
    contained = {r["relatedSpdxElement"] for r in contains}
    ids = {p["SPDXID"] for p in doc["packages"]} - {"SPDXRef-Image"}
    assert contained == ids


def test_write_sbom_sorted_indented_with_a_final_newline(rootfs: Path, tmp_path: Path) -> None:
    doc = _doc(package_manifest(rootfs))
    path = tmp_path / "web-debian-1.2.0.spdx.json"
    write_sbom(path, doc)
    text = path.read_text()
    assert text == json.dumps(doc, sort_keys=True, indent=2) + "\n"
    assert text.startswith('{\n  "SPDXID": "SPDXRef-DOCUMENT",\n')
    first = path.read_bytes()
    write_sbom(path, _doc(package_manifest(rootfs)))
    assert path.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
