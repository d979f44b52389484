"""The job an appliance runs, and its encoding on the job disk.

The job disk is a plain tar (no filesystem: the appliance reads it with
`tar -xf /dev/vdX`) of one-value files that a shell script reads with `cat`:

    epoch                 SOURCE_DATE_EPOCH for every step
    root                  optional: the root's partition number, or "whole"
    hosts                 /etc/hosts lines giving the mirror names their relays
    steps/NNN/kind        packages | file | run
    steps/NNN/name        the step's name in the build log and in errors
    steps/NNN/packages    (packages) one package name a line
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

    @property
    def name(self) -> str:
        return "packages"


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


Step = Packages | WriteFile | RunScript


@dataclass(frozen=True)
class Job:
    steps: tuple[Step, ...]
    epoch: int
    root: str | None = None  # partition number or "whole"; None: the appliance finds it
    hosts: tuple[tuple[str, str], ...] = ()  # (guest address, name) for the mirrors


def _check(step: Step) -> None:
    if isinstance(step, Packages):
        bad = [p for p in step.packages if not _PACKAGE.fullmatch(p)]
        if bad:
            raise InvalidArgument(f"packages: not a package name: {', '.join(bad)}")
    elif isinstance(step, WriteFile):
        path = PurePosixPath(step.path)
        if not path.is_absolute() or ".." in path.parts or "\n" in step.path:
            raise InvalidArgument(f"files: {step.path!r} is not an absolute path inside the image")
        for name in (step.owner, step.group):
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
                raise InvalidArgument(f"files: {name!r} is not a user or group name")


def _fields(step: Step) -> dict[str, bytes]:
    if isinstance(step, Packages):
        return {"kind": b"packages", "packages": "".join(f"{p}\n" for p in step.packages).encode()}
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
