"""What the build's stages share: the Stage each is, its options, the record
of each step, the result, and the error a failed step raises."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln_builder.checks import CheckReport
from kiln_builder.egress import STRICT, EgressPolicy
from kiln_builder.isolation.sandbox import DEFAULT_POLICY, SandboxPolicy
from kiln_builder.outputs import OutputFile
from kiln_builder.storage import StorageAccess
from kiln_common.errors import FailedPrecondition, KilnError

DEFAULT_EPOCH = 1_700_000_000  # SOURCE_DATE_EPOCH when a recipe names none


class StepFailed(FailedPrecondition):
    """A command of a build step failed; the message names the step."""


def in_step(name: str, exc: Exception) -> Exception:
    """The same kind of error (retryable or not), its message naming the step."""
    message = f"step {name} failed: {exc}"
    if isinstance(exc, KilnError):
        try:
            return type(exc)(message)
        except TypeError:  # an error class with a constructor of its own
            pass
    return StepFailed(message)


@dataclass
class StepRecord:
    name: str
    key: str = ""
    cached: bool = False
    seconds: float = 0.0


# The steps that run the recipe's own content: in vm mode one appliance boot runs them.
APPLIANCE_STEPS = ("packages", "files", "run")


class Stage:
    """One step of a build, as the engine runs it, in a step of the build's
    record named `name`. `reads` names the recipe's sections it acts on. A
    layered stage (a from-scratch build's bootstrap and tree edits) makes a
    cached layer: `inputs` is what it adds to the layer's key, which the plan
    chains from the previous layer's and sets, with the layer's name, on it;
    a stage whose layer is cached is not run. Whatever a stage holds past its
    own step (an attached disk, a mount) it enters into `held`, which the
    engine releases once the image is made, on every path."""

    name = ""
    reads: tuple[str, ...] = ()
    key = ""  # a layered stage's layer key, set by the plan
    layer = ""  # and the layer's name in the store

    def inputs(self, bake: Bake) -> Any:
        """What goes into the layer key (empty: nothing to do, left out)."""
        return None

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        raise NotImplementedError

    async def keep(self, bake: Bake) -> None:
        """A layered stage's tree, saved as its layer."""
        await bake.layers.save(self.layer, self.key, bake.rootdir, bake.opts.epoch)


@dataclass(frozen=True)
class BakeOptions:
    out_dir: Path
    work_root: Path
    cache_dir: Path
    build_id: str
    storage: StorageAccess | None = None  # the storage service sharing layers between builders
    publisher: str | None = None  # the publisher: marketplace and glance bases
    no_cache: bool = False
    cache_max_bytes: int = 16 * 1024**3  # local layers beyond this are pruned, oldest use first
    keep_workspace: bool = False
    boot_test: bool = True
    fix_kvm_device: bool = True  # see libvirtd.kvm_device_as_udev_would
    epoch: int = DEFAULT_EPOCH
    force_vm: bool = False  # vm isolation for every recipe (an operator's setting)
    force_vm_why: str = "forced by the builder's setting"  # said in the log and record
    sandbox_refused: str = ""  # why this builder runs no sandbox builds ("" if it does)
    sandbox: SandboxPolicy = DEFAULT_POLICY  # limits on package and recipe commands
    default_mirror: str = ""  # for a recipe naming none; empty: the host's apt source
    egress: EgressPolicy = STRICT  # what the builder's own fetches may reach
    # The mirror suites' state the fingerprint read ((part, digest), ...): in
    # the layer keys. Empty: keys of the recipe alone (a bake that read none).
    apt_state: tuple[tuple[str, str], ...] = ()
    # The base's digest as the fingerprint read it: what a base that follows
    # its release's checksum file is verified against ("" : read it then).
    base_digest: str = ""


@dataclass(frozen=True)
class BaseImage:
    """What a customised build started from, for its record and labels."""

    source: str  # the URL, or artifact:<id>
    sha256: str  # of the bytes as fetched (compressed, if they were)
    description: str  # "qcow2, 2147483648 bytes", "bare ext3 filesystem, bz2-compressed, ..."


@dataclass
class BakeResult:
    outputs: list[OutputFile]
    sbom: Path
    steps: list[StepRecord] = field(default_factory=list)
    console_log: Path | None = None
    boot: Any = None  # the VM runner's BootResult, when the boot test ran
    isolation: str = "sandbox"  # where packages, files and run ran: sandbox | vm
    appliance_accel: Any = None  # vm.Accel the appliance ran under, when one ran
    tests: Path | None = None  # the test commands' results (JSON), when there were any
    base: BaseImage | None = None  # a customised build's base
    checks: CheckReport | None = None  # when the recipe lists checks


Progress = Callable[[StepRecord, str], None]  # (step, "start" | "done")

if TYPE_CHECKING:
    from kiln_builder.engine import Bake
