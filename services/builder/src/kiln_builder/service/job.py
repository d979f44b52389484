"""One attempt at a build, as a worker holds it while it runs and ends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kiln_builder.engine import Bake, StepRecord
from kiln_builder.service.artifacts import BuildArtifacts
from kiln_builder.service.queue import Delivery
from kiln_builder.service.reporter import BuildReporter
from kiln_common.builds import Build, BuildArtifact


@dataclass
class Job:
    build_id: str
    attempt: int
    msg: Delivery
    task: asyncio.Task[list[BuildArtifact]] | None = None
    why_stopped: str = ""  # "cancel" or "shutdown" once asked to stop
    artifacts: BuildArtifacts | None = None
    reporter: BuildReporter | None = None
    steps: list[StepRecord] = field(default_factory=list)
    accel: str = ""  # kvm or tcg, once a boot test ran
    bake: Bake | None = None
    inputs: str = ""  # the result cache's key: its fingerprint, and what it asked for
    cached: Build | None = None  # the build whose artifacts the result cache gave it
