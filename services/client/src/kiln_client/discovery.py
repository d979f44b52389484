"""Where the Kiln services are: an address given by the caller, else the
KILN_<SERVICE> variable (host:port), else the local stack that `kiln up`
started (its stack.json under KILN_HOME, default ~/.kiln)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kiln_common.errors import FailedPrecondition
from kiln_common.proc import pid_alive

SERVICES = ("storage", "builder")


class NotRunning(FailedPrecondition):
    """No address was given and no local stack is running."""


def kiln_home() -> Path:
    return Path(os.environ.get("KILN_HOME") or Path.home() / ".kiln")


@dataclass
class Stack:
    """What `kiln up` started: addresses, ports and pids, kept in stack.json."""

    home: str
    nats_url: str
    storage: str
    storage_http: str
    builder: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def path(home: Path) -> Path:
        return home / "stack.json"

    def save(self) -> None:
        target = Stack.path(Path(self.home))
        staged = target.with_suffix(".tmp")
        staged.write_text(json.dumps(asdict(self), indent=2))
        staged.replace(target)  # a reader never sees half a file

    @classmethod
    def load(cls, home: Path) -> Stack | None:
        try:
            return cls(**json.loads(Stack.path(home).read_text()))
        except FileNotFoundError:
            return None

    def dead(self) -> list[str]:
        """The parts of the stack whose process is gone."""
        return [name for name, pid in self.pids.items() if not pid_alive(pid)]

    def alive(self) -> bool:
        return bool(self.pids) and not self.dead()


def address(service: str, explicit: str = "", home: Path | None = None) -> str:
    """host:port of service ("storage" or "builder")."""
    if explicit:
        return explicit
    variable = f"KILN_{service.upper()}"
    if os.environ.get(variable):
        return os.environ[variable]
    stack = Stack.load(home or kiln_home())
    if stack is None or not getattr(stack, service, ""):
        raise NotRunning(f"Kiln is not running: start it with `kiln up` (or set {variable})")
    return str(getattr(stack, service))
