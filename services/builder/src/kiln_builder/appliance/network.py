"""The appliance's only way out: to the package mirrors, nowhere else.

QEMU 7.2's user-mode network (slirp) maps 10.0.2.2 to the host's loopback,
where Kiln's own services listen, and routes the guest to every address the
node reaches; its `-netdev user` has no switch for libslirp's
disable-host-loopback. What it has is `restrict=on` (no packet from the guest
is routed anywhere, 10.0.2.2 included) together with `guestfwd`, whose
forwarding rules restrict does not affect. So each mirror gets a guest address
(10.0.2.100 onwards) whose connections QEMU hands to a relay on the host
(`socat - TCP:<mirror>:<port>`, one per connection), and the appliance maps the
mirror's name to that address in the image's hosts file while the steps run.
The guest reaches the mirrors and nothing else: not the host's loopback, not
the node's addresses, not the internet.

Everything about the network is in netdev_args(), so another way out (a
network namespace behind slirp4netns --disable-host-loopback) can replace it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kiln_common.errors import InvalidArgument

FIRST_RELAY = ipaddress.IPv4Address("10.0.2.100")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Relay:
    name: str  # the mirror's host name, as the image's apt sources say it
    port: int
    guest_address: str


def host_mirrors(sources: Sequence[Path] | None = None) -> list[str]:
    """Every URI the build host's apt sources name (one-line and deb822 styles)."""
    if sources is None:
        sources = [
            Path("/etc/apt/sources.list"),
            *sorted(Path("/etc/apt/sources.list.d").glob("*")),
        ]
    found: list[str] = []
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.findall(r"(?:^deb\s+(?:\[[^\]]*\]\s+)?|^URIs:\s*)(\S+)", text, re.M):
            if str(match) not in found:
                found.append(str(match))
    return found


def relays(mirrors: Sequence[str]) -> list[Relay]:
    """One guest address per mirror host and port."""
    out: list[Relay] = []
    for url in mirrors:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise InvalidArgument(f"mirror {url!r}: only http and https mirrors are reachable")
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        if any(r.name == parts.hostname and r.port == port for r in out):
            continue
        address = str(FIRST_RELAY + len(out))
        out.append(Relay(parts.hostname, port, address))
    return out


def netdev_args(found: Sequence[Relay]) -> list[str]:
    """QEMU arguments for the guest's one NIC: restricted slirp plus a relay per mirror."""
    rules = "".join(
        # QEMU's option syntax: a comma inside a value is written twice.
        f",guestfwd=tcp:{r.guest_address}:{r.port}-cmd:socat - TCP:{r.name}:{r.port}"
        for r in found
    )
    return [
        "-netdev", f"user,id=net0,restrict=on{rules}",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def hosts_lines(found: Sequence[Relay]) -> tuple[tuple[str, str], ...]:
    return tuple((r.guest_address, r.name) for r in found)
