"""Publications and marketplace entries, as every part of Kiln speaks of them:
what a publication asked for (PublishRequest, its Glance and marketplace
targets), what came of it per artifact and target (Publication, TargetResult),
and a marketplace entry as the Publisher API shows it (Entry). Plain
dataclasses, no protobuf: kiln_client.wire converts them to and from the
Publisher API's messages field by field (the names and enum numbers are the
API's); the publisher stores Publications as JSON (kiln_publisher.model)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from kiln_common.builds import OpenEnum


def now() -> datetime:
    return datetime.now(UTC)


class PublicationState(OpenEnum):
    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    DONE = 3
    FAILED = 4


@dataclass(frozen=True)
class TargetResult:
    """One target's outcome for one artifact."""

    artifact_id: str = ""
    kind: str = ""  # glance | marketplace | request (a publication that could not start)
    target: str = ""  # cloud[/region] or endorser
    state: PublicationState = PublicationState.PENDING
    error: str = ""
    cloud: str = ""
    region: str = ""
    image_id: str = ""
    image_name: str = ""
    method: str = ""  # web-download | glance-direct | upload | existing
    retired: tuple[str, ...] = ()
    entry_identifier: str = ""

    @property
    def key(self) -> str:
        return f"{self.artifact_id}:{self.kind}:{self.target}"


def overall(results: tuple[TargetResult, ...]) -> PublicationState:
    """A publication's state: FAILED when any target failed, DONE when every
    one is done, RUNNING once any started."""
    states = {r.state for r in results}
    if PublicationState.FAILED in states:
        return PublicationState.FAILED
    if states <= {PublicationState.DONE} and results:
        return PublicationState.DONE
    if states & {PublicationState.RUNNING, PublicationState.DONE}:
        return PublicationState.RUNNING
    return PublicationState.PENDING


@dataclass(frozen=True)
class Publication:
    id: str = ""
    artifact_id: str = ""  # the artifact asked for, or empty for a build
    build_id: str = ""
    results: tuple[TargetResult, ...] = ()
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    tenant: str = ""  # whose publication it is ("" with identities off)

    @property
    def state(self) -> PublicationState:
        """Derived from the results, never stored on its own."""
        return overall(self.results)

    def with_result(self, result: TargetResult) -> Publication:
        """This publication with result in place of the one of its key (or added)."""
        keys = [r.key for r in self.results]
        ordered = (
            tuple(result if r.key == result.key else r for r in self.results)
            if result.key in keys
            else (*self.results, result)
        )
        return replace(self, results=ordered, updated_at=now())


@dataclass(frozen=True)
class GlanceTarget:
    """Where to publish in Glance, as the API asks it (empty: the default)."""

    cloud: str = ""  # a cloud name in the publisher's clouds.yaml
    region: str = ""  # the cloud's default
    name: str = ""  # the recipe's name and version
    visibility: str = ""  # private
    tags: tuple[str, ...] = ()
    properties: dict[str, str] = field(default_factory=dict)
    min_disk: int = 0  # GiB
    min_ram: int = 0  # MiB
    keep: int = 0  # rotation: keep the newest N images of the name (0: none)
    retire: str = ""  # hide | deactivate | delete (empty: hide)


@dataclass(frozen=True)
class MarketplaceTarget:
    endorser: str = ""  # the publisher's default endorser
    valid_for: timedelta | None = None  # six months
    title: str = ""
    description: str = ""


@dataclass(frozen=True)
class PublishRequest:
    """Publish one artifact, or every image artifact of a build (one of the two)."""

    artifact_id: str | None = None
    build_id: str | None = None
    glance: tuple[GlanceTarget, ...] = ()
    marketplace: MarketplaceTarget | None = None  # None: not to the marketplace

    def __post_init__(self) -> None:
        if self.artifact_id is not None and self.build_id is not None:
            raise ValueError("a publication names an artifact_id or a build_id, not both")


@dataclass(frozen=True)
class Entry:
    """A marketplace entry as the Publisher API shows it: the signed document's
    facts (kiln_market.Entry) with its status, and the document itself."""

    identifier: str = ""
    status: str = ""  # valid | expired | deprecated
    endorser: str = ""
    os: str = ""
    os_version: str = ""
    arch: str = ""
    title: str = ""
    description: str = ""
    size: int = 0
    format: str = ""
    sha512: str = ""
    sha256: str = ""
    locations: tuple[str, ...] = ()
    created: datetime | None = None
    valid_until: datetime | None = None
    document: bytes = b""  # exactly as signed and stored: `kiln market verify --file`
    artifact_id: str = ""
    # GetEntry only: a download URL this publisher's storage signed just now
    # (entries outlive the URLs signed into their locations); empty if none.
    fresh_location: str = ""


@dataclass(frozen=True)
class BaseHeader:
    """What the publisher says of a Glance base before its bytes."""

    size: int = 0
    sha256: str = ""  # empty: Glance gives the SHA-512 only
    sha512: str = ""
    format: str = ""
