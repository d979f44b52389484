"""Where the Kiln services are: an address given by the caller, else the
KILN_<SERVICE> variable (host:port), else the configuration file's context
(kiln_client.config), else the local stack that `kiln up` started (its
stack.json under KILN_HOME, default ~/.kiln)."""

from __future__ import annotations

import os
from pathlib import Path

from kiln_client import config
from kiln_common.errors import FailedPrecondition
from kiln_common.home import Stack, kiln_home

__all__ = ["NotRunning", "Stack", "address", "kiln_home"]


class NotRunning(FailedPrecondition):
    """No address was given and no local stack is running."""


def address(service: str, explicit: str = "", home: Path | None = None) -> str:
    """host:port of service ("storage", "builder" or "publisher")."""
    if explicit:
        return explicit
    variable = f"KILN_{service.upper()}"
    if os.environ.get(variable):
        return os.environ[variable]
    configured = config.value(service)
    if configured:
        return configured
    stack = Stack.load(home or kiln_home())
    if stack is None or not getattr(stack, service, ""):
        raise NotRunning(f"Kiln is not running: start it with `kiln up` (or set {variable})")
    return str(getattr(stack, service))
