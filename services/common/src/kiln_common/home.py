"""Where the local stack lives: KILN_HOME (default ~/.kiln) and its record,
stack.json, of what `kiln up` started. Clients read it to find the services;
kiln_devstack writes it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kiln_common.proc import pid_alive

TOKEN_FILE = "token"  # the stack's admin token, for the CLI (0600)
SERVICE_TOKEN_FILE = "service-token"  # what the stack's services send each other
TLS_DIR = "tls"  # a TLS stack's local CA and server certificate
NATS_USERS_FILE = "nats-users.json"  # the stack's NATS users and passwords (0600)
LOCAL_TENANT = "local"  # the tenant of the stack's admin token (and so of what the CLI makes)


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
    publisher: str = ""
    publisher_http: str = ""  # the marketplace's JSON API and catalogue
    tls_ca: str = ""  # a TLS stack (`kiln up --tls`): the CA its servers' certificate chains to
    pids: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def path(home: Path) -> Path:
        return home / "stack.json"

    def save(self) -> None:
        target = Stack.path(Path(self.home))
        staged = target.with_suffix(".tmp")
        # The owner's only: nats_url carries the stack's NATS admin password.
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(asdict(self), indent=2))
        staged.replace(target)  # a reader never sees half a file

    @classmethod
    def load(cls, home: Path) -> Stack | None:
        try:
            return cls(**json.loads(Stack.path(home).read_text()))
        except FileNotFoundError:
            return None

    def token(self) -> str:
        """The stack's admin token ("" for a stack without identities)."""
        path = Path(self.home) / TOKEN_FILE
        return path.read_text().strip() if path.is_file() else ""

    def dead(self) -> list[str]:
        """The parts of the stack whose process is gone."""
        return [name for name, pid in self.pids.items() if not pid_alive(pid)]

    def alive(self) -> bool:
        return bool(self.pids) and not self.dead()
