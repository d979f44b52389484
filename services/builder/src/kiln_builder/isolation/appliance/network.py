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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln_builder import aptsources
from kiln_builder.egress import parse_url
from kiln_common.errors import InvalidArgument

FIRST_RELAY = ipaddress.IPv4Address("10.0.2.100")


@dataclass(frozen=True)
class Relay:
    name: str  # the mirror's host name, as the image's apt sources say it
    port: int
    guest_address: str
    proxy_port: int | None = None  # the build's egress proxy on the host's loopback


def host_mirrors(sources: Sequence[Path] | None = None) -> list[str]:
    """Every URI the build host's apt sources name (kiln_builder.aptsources)."""
    return aptsources.uris(sources)


def relays(mirrors: Sequence[str], proxy: str | None = None) -> list[Relay]:
    """One guest address per mirror host and port. Each mirror's host name was
    checked (egress.parse_url): nothing but letters, digits, dots and hyphens
    reaches QEMU's option string or socat's command line. proxy: the build's
    egress proxy, through which each relay connects (the policy then decides,
    per connection, at the address it checked)."""
    out: list[Relay] = []
    proxy_port = parse_url(proxy, "the egress proxy").port if proxy else None
    for url in mirrors:
        try:
            target = parse_url(url, "mirror")
        except InvalidArgument as exc:
            raise InvalidArgument(f"{exc}: only http and https mirrors are reachable") from None
        if any(r.name == target.host and r.port == target.port for r in out):
            continue
        address = str(FIRST_RELAY + len(out))
        out.append(Relay(target.host, target.port, address, proxy_port))
    return out


def _relay_command(relay: Relay) -> str:
    if relay.proxy_port is None:
        return f"socat - TCP:{relay.name}:{relay.port}"
    # socat's CONNECT through the proxy; QEMU's option syntax doubles the comma.
    return f"socat - PROXY:127.0.0.1:{relay.name}:{relay.port},,proxyport={relay.proxy_port}"


def netdev_args(found: Sequence[Relay]) -> list[str]:
    """QEMU arguments for the guest's one NIC: restricted slirp plus a relay per mirror."""
    rules = "".join(
        f",guestfwd=tcp:{r.guest_address}:{r.port}-cmd:{_relay_command(r)}" for r in found
    )
    return [
        "-netdev", f"user,id=net0,restrict=on{rules}",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def hosts_lines(found: Sequence[Relay]) -> tuple[tuple[str, str], ...]:
    return tuple((r.guest_address, r.name) for r in found)
