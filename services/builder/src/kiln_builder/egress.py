"""What the builder itself may connect to on a recipe's behalf: the base image
URL (and every redirect), the bootstrap mirror, the appliance's mirror relays.

A recipe names these, so they are hostile: `http://169.254.169.254/` is a
cloud's metadata service, `http://127.0.0.1:4222/` the builder's own NATS,
`http://10.96.0.1/` the cluster's API. The policy refuses, unless allow-listed:
- link-local addresses (169.254.0.0/16, fe80::/10) and the metadata services
  that live elsewhere (fd00:ec2::254, 100.100.100.200);
- loopback (127.0.0.0/8, ::1), unless the policy allows it (`kiln up` and
  `kiln-builder bake`, one trusted user on one machine, do; a cluster does not);
- unspecified, multicast and broadcast addresses;
- the operator's denied networks: the cluster's pod and service ranges, the
  node's address, anything else named.

Every connection goes through one EgressProxy (egress_proxy) per build, on
the builder's loopback: it resolves the name once, checks every address it got, and connects
to a checked one, so a name that resolves to an allowed address when checked
and to a forbidden one a moment later (DNS rebinding) gets nowhere. apt (in
mmdebstrap) uses it as its http_proxy, the base downloader as its proxy (each
redirect is a new request through it), the appliance's relays as socat's
CONNECT proxy. A refusal is answered 403 with the reason, which the builder
puts in the build's error.

Host names are checked for their syntax wherever they are accepted, so that
nothing of a URL reaches a command line or QEMU's option syntax
(`http://x,restrict=off/` would otherwise add a netdev option).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from kiln_common.errors import FailedPrecondition, InvalidArgument
from kiln_common.urls import Target, http_target, valid_host

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LINK_LOCAL = ("169.254.0.0/16", "fe80::/10")
# Metadata services outside link-local: AWS's IPv6 one, Alibaba Cloud's.
METADATA = ("fd00:ec2::254/128", "100.100.100.200/32")
LOOPBACK = ("127.0.0.0/8", "::1/128")
# Private networks: a cluster's pods, services, nodes and VPC live there, which
# only an operator can name; refused on a cluster unless allow-listed.
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: the IPv4 is the tail
# IPv6 prefixes that carry an IPv4 the policy could not see: NAT64 for local use,
# 6to4 and Teredo. Refused outright (the well-known NAT64 prefix is translated).
TUNNELLED = ("64:ff9b:1::/48", "2002::/16", "2001::/32")


class EgressRefused(FailedPrecondition):
    """The policy forbids the destination; nothing was sent to it."""


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: IPv4-mapped, the NAT64
    well-known prefix, or the deprecated IPv4-compatible form."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # not :: or ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_url(url: str, what: str = "URL") -> Target:
    """kiln_common.urls.http_target, its refusal an InvalidArgument naming what."""
    try:
        return http_target(url)
    except ValueError as exc:
        raise InvalidArgument(f"{what} {url[:200]!r}: {exc}") from None


def _networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class EgressPolicy:
    allow_loopback: bool = False
    """Loopback addresses are reachable (one user on one machine: local mirrors)."""
    allow_private: bool = False
    """Private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) are
    reachable: one machine on a LAN; never a cluster, whose own networks are there."""
    denied: tuple[str, ...] = ()
    """Networks refused besides the fixed ones: the cluster's, the node's address."""
    allowed: tuple[str, ...] = ()
    """Networks reachable whatever else says (an internal mirror in a denied range)."""
    resolver: Resolver = field(default=system_resolver, compare=False)

    def __post_init__(self) -> None:
        _networks([*self.denied, *self.allowed])  # ValueError names a bad one

    def refusal(self, address: str) -> str | None:
        """Why the policy refuses an address, or None if it allows it."""
        ip: IPAddress = ipaddress.ip_address(address)
        inner = _embedded_v4(ip)
        if inner is not None:  # ::ffff:169.254.169.254 is 169.254.169.254
            return self.refusal(str(inner))
        if any(ip in net for net in _networks(self.allowed)):
            return None
        rules = [
            (LINK_LOCAL, "link-local (a cloud's metadata service lives there)"),
            (METADATA, "a cloud's metadata service"),
            (() if self.allow_loopback else LOOPBACK, "loopback (the builder's own services)"),
            (() if self.allow_private else PRIVATE, "in a private network"),
            (TUNNELLED, "an IPv6 address that carries an IPv4 one"),
        ]
        for nets, why in rules:
            for net in _networks(nets):
                if ip in net:
                    return f"{ip} is {why} ({net})"
        if any(ip in net for net in _networks(self.denied)):
            # Which of the operator's networks is not said: the build's error is
            # the recipe author's to read.
            return f"{ip} is in a network the builder's settings deny"
        if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            return f"{ip} is not a unicast address"
        return None

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses host resolves to, every one allowed; raises EgressRefused
        if any is refused (so a name cannot mix a forbidden address in)."""
        if not valid_host(host):
            raise EgressRefused(f"{host[:100]!r} is not a valid host name")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        try:
            found = [str(literal)] if literal is not None else await self.resolver(host, port)
        except OSError as exc:
            raise EgressRefused(f"{host} cannot be resolved: {exc}") from None
        if not found:
            raise EgressRefused(f"{host} resolves to no address")
        for address in found:
            if (why := self.refusal(address)) is not None:
                raise EgressRefused(f"egress to {host}:{port} refused: {why}")
        return found

    def check_addresses_sync(self, host: str, port: int) -> list[str]:
        """addresses() for a caller in a thread (the base downloader's)."""
        return asyncio.run(self.addresses(host, port))

    async def check_url(self, url: str, what: str = "URL") -> Target:
        """Refuses a URL whose host the policy forbids, before any connection."""
        target = parse_url(url, what)
        try:
            await self.addresses(target.host, target.port)
        except EgressRefused as exc:
            raise EgressRefused(f"{what} {url[:200]}: {exc}") from None
        return target


STRICT = EgressPolicy()  # a cluster's builder: no loopback, no private network
LOCAL = EgressPolicy(allow_loopback=True, allow_private=True)  # kiln up and bake: one machine


@dataclass(frozen=True)
class Route:
    """How a build reaches what its recipe names: the policy (to check a URL
    before anything is sent) and the proxy that enforces it on every connection."""

    policy: EgressPolicy
    proxy: str  # http://127.0.0.1:PORT
