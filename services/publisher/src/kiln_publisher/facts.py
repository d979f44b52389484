"""What is published, from what storage knows: a stored artifact's labels and
checksums, the build's SBOM and the recipe's `from` and `publish` sections become
A's ImageSource and B's ImageFacts. Pure functions, so they are unit-tested."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from kiln_common.artifacts import VERSION_LABEL, Artifact
from kiln_common.errors import FailedPrecondition, InvalidArgument
from kiln_market import ImageFacts
from kiln_publisher.glance import ImageSource
from kiln_recipe.schema import Publish
from kiln_recipe.source import RecipeSource

# Debian's architecture names to the ones Glance's `architecture` property uses.
GLANCE_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686"}
COMPRESSIONS = ("gz", "bz2", "xz", "zst")
# Formats Glance takes as they are (a compressed file is not a disk image).
GLANCE_FORMATS = {"qcow2", "qcow2c", "raw", "vmdk"}
# The image version the builder labels each artifact of a build with (1.2-7).


@dataclass(frozen=True)
class RecipeFacts:
    """What the recipe says about the image beyond its artifact's labels."""

    os: str = ""
    os_version: str = ""
    arch: str = "amd64"
    recipe_sha256: str = ""
    publish: Publish = field(default_factory=Publish)
    guest_agent: bool = False  # the recipe installs qemu-guest-agent


def split_format(label: str) -> tuple[str, str]:
    """'raw.xz' -> ('raw', 'xz'); 'qcow2' -> ('qcow2', '')."""
    base, _, outer = label.partition(".")
    return (base, outer) if outer in COMPRESSIONS else (label, "")


def recipe_document(source: RecipeSource) -> dict[str, Any]:
    """The recipe's YAML document as a mapping (the builder kept the source)."""
    if source.structured is not None:
        return dict(source.structured)
    try:
        doc = yaml.safe_load(source.yaml) if source.yaml is not None else None
    except yaml.YAMLError as exc:
        raise FailedPrecondition(f"the build's recipe cannot be read: {exc}") from None
    return doc if isinstance(doc, dict) else {}


def publish_section(raw: object, prefix: str = "publish.") -> Publish:
    """A publish: section checked; the first problem is an InvalidArgument
    naming its field (the builder checked a recipe's at submission too)."""
    try:
        return Publish.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(f"{prefix}{where}: {first['msg']}") from None


def recipe_facts(doc: Mapping[str, Any], digest: str = "") -> RecipeFacts:
    source = doc.get("from") or {}
    boot = source.get("bootstrap") or {} if isinstance(source, dict) else {}
    return RecipeFacts(
        os=str(boot.get("distro", "")),
        os_version=str(boot.get("release", "")),
        arch=str(boot.get("arch", "amd64")),
        recipe_sha256=digest,
        publish=publish_section(doc.get("publish")),
        guest_agent="qemu-guest-agent" in (doc.get("packages") or []),
    )


def default_name(artifact: Artifact) -> str:
    labels = artifact.labels
    name = labels.get("name", "") or artifact.id
    return f"{name}-{labels['version']}" if labels.get("version") else name


def glance_properties(artifact: Artifact, recipe: RecipeFacts, sbom_sha256: str) -> dict[str, str]:
    """Glance's well-known image properties and Kiln's own."""
    props = {
        "hw_disk_bus": "virtio",
        "hw_vif_model": "virtio",
        # Only where the image has the agent: Nova then expects it to answer.
        "hw_qemu_guest_agent": "yes" if recipe.guest_agent else "no",
        "kiln_artifact_id": artifact.id,
    }
    if recipe.os:
        props["os_distro"] = recipe.os
    if recipe.os_version:
        props["os_version"] = recipe.os_version
    props["architecture"] = GLANCE_ARCH.get(recipe.arch, recipe.arch)
    optional = {
        "kiln_build_id": artifact.labels.get("build-id", ""),
        "kiln_recipe_sha256": recipe.recipe_sha256,
        "kiln_sbom_sha256": sbom_sha256,
        "kiln_base_sha256": artifact.labels.get("base-sha256", ""),
        "kiln_version": artifact.labels.get(VERSION_LABEL, ""),
    }
    props.update({k: v for k, v in optional.items() if v})
    return props


def glance_can_take(artifact: Artifact) -> bool:
    fmt, compression = split_format(artifact.labels.get("format", "qcow2"))
    return not compression and fmt in GLANCE_FORMATS


def image_source(
    artifact: Artifact,
    url: str,
    stream: Callable[[], AsyncIterator[bytes]],
    recipe: RecipeFacts,
    sbom_sha256: str = "",
) -> ImageSource:
    fmt, _ = split_format(artifact.labels.get("format", "qcow2"))
    if not glance_can_take(artifact):
        raise FailedPrecondition(
            f"artifact {artifact.id} is {artifact.labels.get('format')}: Glance takes "
            "qcow2, raw or vmdk images (add such an output to the recipe)"
        )
    return ImageSource(
        artifact_id=artifact.id,
        url=url,
        size=artifact.size,
        sha256=artifact.checksums.sha256,
        sha512=artifact.checksums.sha512,
        disk_format="qcow2" if fmt == "qcow2c" else fmt,
        name=default_name(artifact),
        properties=glance_properties(artifact, recipe, sbom_sha256),
        stream=stream,
    )


def image_facts(
    artifact: Artifact,
    locations: tuple[str, ...],
    recipe: RecipeFacts,
    creator: str,
    sbom_sha256: str = "",
    title: str = "",
    description: str = "",
) -> ImageFacts:
    fmt, compression = split_format(artifact.labels.get("format", "qcow2"))
    sums = artifact.checksums
    if not (sums.md5 and sums.sha1):
        raise FailedPrecondition(
            f"artifact {artifact.id} has no MD5/SHA-1 recorded: store it again to publish it"
        )
    return ImageFacts(
        artifact_id=artifact.id,
        size=artifact.size,
        md5=sums.md5,
        sha1=sums.sha1,
        sha256=sums.sha256,
        sha512=sums.sha512,
        format="qcow2" if fmt == "qcow2c" else fmt,
        compression=compression,
        os=recipe.os,
        os_version=recipe.os_version,
        arch=recipe.arch,
        hypervisor="kvm",
        title=title or default_name(artifact),
        description=description,
        creator=creator,
        locations=locations,
        sbom_sha256=sbom_sha256,
        version=artifact.labels.get(VERSION_LABEL, ""),
    )
