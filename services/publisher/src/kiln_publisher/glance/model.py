"""What is published to Glance, where, and what came of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

RETIRE_HOW = ("hide", "deactivate", "delete")


@dataclass(frozen=True)
class ImageSource:
    """One image artifact, as the publisher's caller found it in storage."""

    artifact_id: str
    url: str  # the storage service's download URL (Range-capable HTTP)
    size: int
    sha256: str
    sha512: str
    disk_format: str  # qcow2 | raw | vmdk | ...
    name: str  # default image name (recipe name + version)
    properties: Mapping[str, str]  # os_distro, os_version, architecture, hw_*, kiln_* ...
    # The bytes, from storage, each call a fresh iterator from the start: never a
    # full local copy, and a retried publication reads them again.
    stream: Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class GlanceTarget:
    cloud: str  # a cloud name in the publisher's clouds.yaml
    region: str | None = None
    name: str | None = None  # default: ImageSource.name
    visibility: str = "private"
    tags: tuple[str, ...] = ()
    properties: Mapping[str, str] = field(default_factory=dict)
    min_disk: int = 0
    min_ram: int = 0
    keep: int = 0  # rotation: keep the newest N images of the name (0: no rotation)
    retire: str = "hide"  # hide (os_hidden) | deactivate | delete
    # Show the artifact's image again if it is there but hidden: a channel that
    # moved back to a build whose image rotation hid must show that image.
    reveal: bool = False


@dataclass(frozen=True)
class GlanceImage:
    cloud: str
    region: str | None
    image_id: str
    name: str
    method: str  # web-download | glance-direct | upload | existing
    retired: tuple[str, ...]  # image ids hidden/deactivated/deleted by rotation
