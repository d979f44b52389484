"""The job an appliance runs, and its encoding on the job disk.

The job disk is a plain tar (no filesystem: the appliance reads it with
`tar -xf /dev/vdX`) of one-value files that a shell script reads with `cat`:

    epoch                 SOURCE_DATE_EPOCH for every step
    root                  optional: the root's partition number, or "whole"
    hosts                 /etc/hosts lines giving the mirror names their relays
    grow                  optional: "1" to grow the root partition and filesystem
                          to the disk (the host made the file bigger)
    export                optional: paths under the root, one a line ("." for the
                          whole tree), written as a tar to the disk kiln-out
    steps/NNN/kind        packages | file | run | sysprep
    steps/NNN/name        the step's name in the build log and in errors
    steps/NNN/packages    (packages) one package name a line
    steps/NNN/packages-ubuntu  (packages) the same for an Ubuntu image, if the names differ
    steps/NNN/operations  (sysprep) one operation a line (sysprep.sh)
    steps/NNN/path        (file) absolute path in the image
    steps/NNN/data        (file) the bytes
    steps/NNN/mode        (file) octal, e.g. 0644
    steps/NNN/owner       (file) user name or uid, looked up in the image
    steps/NNN/group       (file) group name or gid, looked up in the image
    steps/NNN/script      (run) the script, run by its #! interpreter, else /bin/sh -e
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from kiln_common.errors import InvalidArgument

_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.:=~-]*")


@dataclass(frozen=True)
class Packages:
    packages: tuple[str, ...]
    ubuntu: tuple[str, ...] | None = None  # the names for an Ubuntu image, if they differ

    @property
    def name(self) -> str:
        return "packages"


@dataclass(frozen=True)
class Sysprep:
    operations: tuple[str, ...]

    @property
    def name(self) -> str:
        return "sysprep"


@dataclass(frozen=True)
class WriteFile:
    path: str
    data: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"

    @property
    def name(self) -> str:
        return f"files {self.path}"


@dataclass(frozen=True)
class RunScript:
    script: bytes
    label: str = "script"

    @property
    def name(self) -> str:
        return f"run {self.label}"


Step = Packages | WriteFile | RunScript | Sysprep
# What sysprep.sh knows (the recipe's own list is checked against it too).
SYSPREP = (
    "ssh-host-keys", "machine-id", "udev-persistent-net", "root-password", "logs",
    "shell-history", "apt-lists", "resolv-conf",
)  # fmt: skip
WHOLE = (".",)  # export: the whole tree


@dataclass(frozen=True)
class Job:
    steps: tuple[Step, ...]
    epoch: int
    root: str | None = None  # partition number or "whole"; None: the appliance finds it
    hosts: tuple[tuple[str, str], ...] = ()  # (guest address, name) for the mirrors
    grow: bool = False  # grow the root partition and filesystem to the disk
    export: tuple[str, ...] = ()  # paths under the root to hand back as a tar; WHOLE


def _check(step: Step) -> None:
    if isinstance(step, Packages):
        bad = [p for p in (*step.packages, *(step.ubuntu or ())) if not _PACKAGE.fullmatch(p)]
        if bad:
            raise InvalidArgument(f"packages: not a package name: {', '.join(bad)}")
    elif isinstance(step, WriteFile):
        path = PurePosixPath(step.path)
        if not path.is_absolute() or ".." in path.parts or "\n" in step.path:
            raise InvalidArgument(f"files: {step.path!r} is not an absolute path inside the image")
        for name in (step.owner, step.group):
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
                raise InvalidArgument(f"files: {name!r} is not a user or group name")
    elif isinstance(step, Sysprep):
        unknown = [op for op in step.operations if op not in SYSPREP]
        if unknown:
            raise InvalidArgument(f"sysprep: unknown operation {unknown[0]!r}")


def _lines(values: Sequence[str]) -> bytes:
    return "".join(f"{v}\n" for v in values).encode()


def _fields(step: Step) -> dict[str, bytes]:
    if isinstance(step, Packages):
        found = {"kind": b"packages", "packages": _lines(step.packages)}
        if step.ubuntu is not None:
            found["packages-ubuntu"] = _lines(step.ubuntu)
        return found
    if isinstance(step, Sysprep):
        return {"kind": b"sysprep", "operations": _lines(step.operations)}
    if isinstance(step, WriteFile):
        return {
            "kind": b"file",
            "path": step.path.encode(),
            "data": step.data,
            "mode": f"{step.mode:04o}".encode(),
            "owner": step.owner.encode(),
            "group": step.group.encode(),
        }
    return {"kind": b"run", "script": step.script}


def encode(job: Job) -> bytes:
    """The job disk's bytes (a tar, padded by tar itself to 10 KiB records)."""
    files: dict[str, bytes] = {"epoch": str(job.epoch).encode()}
    if job.root is not None:
        files["root"] = job.root.encode()
    files["hosts"] = "".join(f"{addr} {name}\n" for addr, name in job.hosts).encode()
    if job.grow:
        files["grow"] = b"1\n"
    if job.export:
        bad = [p for p in job.export if p.startswith("/") or ".." in p.split("/") or "\n" in p]
        if bad:
            raise InvalidArgument(f"export: {bad[0]!r} is not a path under the root")
        files["export"] = _lines(job.export)
    for index, step in enumerate(job.steps, start=1):
        _check(step)
        fields = {**_fields(step), "name": step.name.encode()}
        for key, value in fields.items():
            files[f"steps/{index:03d}/{key}"] = value
    return _tar(files)


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


def steps_named(steps: Sequence[Step]) -> list[str]:
    return [step.name for step in steps]
