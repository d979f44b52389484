"""The janitor: destroys kiln-* domains whose builder died while libvirtd was not
watching (AUTODESTROY covers the rest).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import libvirt

from kiln_builder.vm.domain import DOMAIN_PREFIX, Owner, read_owner
from kiln_common.errors import Unavailable
from kiln_common.proc import process_start

log = logging.getLogger(__name__)


async def reap_orphans(uri: str) -> list[str]:
    """Destroys running kiln-* domains whose recorded builder, on this host, is dead.
    Returns their names. Call it when a builder starts."""
    return await asyncio.to_thread(_reap, uri)


def _reap(uri: str) -> list[str]:
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise Unavailable(f"cannot connect to libvirt at {uri}: {exc}") from exc
    try:
        domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return [dom.name() for dom in domains if _orphaned(dom) and _destroyed(dom)]
    finally:
        conn.close()


def _orphaned(dom: Any) -> bool:
    name = dom.name()
    if not name.startswith(DOMAIN_PREFIX):
        return False
    found = read_owner(dom)
    if found is None:
        log.warning("%s has no Kiln metadata: left alone", name)
        return False
    owner = found[1]
    # Another host's pid means nothing here: that builder reaps its own.
    if owner.host != socket.gethostname() or _owner_alive(owner):
        return False
    log.warning("destroying orphan domain %s (builder pid %d is gone)", name, owner.pid)
    return True


def _destroyed(dom: Any) -> bool:
    try:
        dom.destroy()
    except libvirt.libvirtError as exc:  # it may have stopped meanwhile
        log.warning("could not destroy %s: %s", dom.name(), exc)
        return False
    return True


def _owner_alive(owner: Owner) -> bool:
    started = process_start(owner.pid)
    if started is None:
        return False
    return owner.started is None or started == owner.started
