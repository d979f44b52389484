"""A build, as every part of Kiln speaks of it: the record (Build, its Steps,
artifacts, error, checks, test commands, base) and the updates a watcher gets.
Plain dataclasses, no protobuf: the Builder API's messages are made from them
and read into them at the edges (kiln_client.wire); the builder's core, worker
and lifecycle, the client and the CLI work on these. Field names and enum
numbers are the API's, so the two convert field by field."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import ClassVar


class OpenEnum(IntEnum):
    """An API enum is open: a newer pod may store a number this one does not
    know. It is kept as it is (named UNKNOWN_<n>), not refused, so reading,
    listing and rewriting such a record neither fails nor changes it."""

    @classmethod
    def _missing_(cls, value: object) -> OpenEnum | None:
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


class BuildState(OpenEnum):
    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5


class StepState(OpenEnum):
    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    DONE = 3
    FAILED = 4
    CANCELLED = 5


@dataclass
class Step:
    name: str = ""
    state: StepState = StepState.UNSPECIFIED
    cached: bool = False  # a cached layer was used
    seconds: float = 0.0
    started: datetime | None = None
    finished: datetime | None = None
    key: str = ""  # the layer key, for cached steps


@dataclass
class BuildArtifact:
    artifact_id: str = ""  # in the storage service
    name: str = ""  # file name
    kind: str = ""  # image | sbom | checks | console-log | tests | build-log
    format: str = ""  # qcow2, raw.xz, tar.zst, spdx.json, log
    size: int = 0
    sha256: str = ""
    sha512: str = ""
    # Not filled any more: a signed URL is a credential, and a record outlives
    # it. GetDownloadUrl (`kiln artifact url ID`) signs one for its caller.
    url: str = ""


@dataclass
class BuildError:
    step: str = ""  # the step that failed, if any
    message: str = ""
    log_tail: list[str] = field(default_factory=list)  # the last log lines


@dataclass
class CheckResult:
    """One rule of a requirement profile, as the build found it."""

    profile: str = ""
    rule: str = ""
    statement: str = ""
    passed: bool = False
    advisory: bool = False  # a failure only warns
    file: str = ""  # the file it looked at (or "outputs")
    why: str = ""


@dataclass
class TestCommandResult:
    """One of the recipe's test.commands, run inside the booted guest."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    command: str = ""
    exit_status: int = 0  # 124 (or 137) when its timeout stopped it
    seconds: float = 0.0
    output: str = ""  # the end of its stdout and stderr
    output_bytes: int = 0  # how much it wrote in all
    timed_out: bool = False
    passed: bool = False


@dataclass
class BaseImage:
    """What a customised build started from (recipe from.image)."""

    source: str = ""  # the URL, or artifact:<id>
    sha256: str = ""  # of the bytes as fetched
    description: str = ""  # what the inspector found: format, size


@dataclass
class FingerprintPart:
    name: str = ""  # recipe, base, apt <uri> <suite>, builder
    value: str = ""  # its digest (sha256:...), or the builder's version


@dataclass
class Fingerprint:
    """Every input of a build, each part digested (kiln_builder.fingerprint)."""

    digest: str = ""  # of all the parts
    parts: list[FingerprintPart] = field(default_factory=list)


@dataclass
class Build:
    id: str = ""
    state: BuildState = BuildState.UNSPECIFIED
    name: str = ""  # the recipe's name and version
    version: str = ""
    recipe_digest: str = ""
    idempotency_key: str = ""
    steps: list[Step] = field(default_factory=list)
    artifacts: list[BuildArtifact] = field(default_factory=list)
    error: BuildError | None = None
    created: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    worker: str = ""  # the worker running or last running it
    attempt: int = 0  # deliveries so far (1 on the first run)
    cancel_requested: bool = False
    log_artifact_id: str = ""  # the full log, once the build ended
    no_cache: bool = False
    skip_boot_test: bool = False
    accel: str = ""  # kvm or tcg, when a boot test ran
    checks: list[CheckResult] = field(default_factory=list)
    test_commands: list[TestCommandResult] = field(default_factory=list)
    base: BaseImage | None = None  # a customised build's base image
    isolation: str = ""  # where packages, files and run ran: sandbox or vm
    appliance_accel: str = ""  # kvm or tcg, when the vm appliance ran
    isolation_reason: str = ""  # why that isolation: the recipe's, or the builder's setting
    tenant: str = ""  # whose build it is: its submitter's tenant ("" with identities off)
    fingerprint: Fingerprint | None = None  # its inputs, read before it ran
    cached_from: str = ""  # the build whose artifacts the result cache gave this one
    schedule_id: str = ""  # the schedule whose run submitted it
    schedule_run: int = 0  # and that run's number
    build_number: int = 0  # taken when its image is made: orders the name's builds (gaps possible)
    image_version: str = ""  # the recipe's version and the build number: 1.2-7
    ancestry: list[str] = field(default_factory=list)  # its base's build, that one's base's, ...
    revoked: datetime | None = None  # when its version was revoked
    revoked_reason: str = ""


@dataclass
class StepUpdate:
    name: str = ""
    state: StepState = StepState.UNSPECIFIED
    cached: bool = False
    seconds: float = 0.0
    index: int = 0  # 1-based position of the step
    total: int = 0  # how many steps the build has


@dataclass
class Progress:
    step: str = ""
    fraction: float = 0.0  # 0..1 of the step
    detail: str = ""


@dataclass
class LogLine:
    text: str = ""
    level: str = ""  # INFO, WARNING, ERROR, OUTPUT


@dataclass
class BuildUpdate:
    """One thing that happened to a build: exactly one of state, step,
    progress and log is set (its kind); build, the record, on state changes."""

    seq: int = 0  # increasing within the build
    build_id: str = ""
    time: datetime | None = None
    state: BuildState | None = None
    step: StepUpdate | None = None
    progress: Progress | None = None
    log: LogLine | None = None
    build: Build | None = None

    @property
    def kind(self) -> str | None:
        for name in ("state", "step", "progress", "log"):
            if getattr(self, name) is not None:
                return name
        return None
