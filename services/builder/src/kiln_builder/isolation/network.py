"""The sandbox's only way out: user-mode networking (slirp4netns) attached to
the sandbox's own network namespace, behind a firewall in that namespace.

slirp4netns turns the sandbox's packets into ordinary sockets of the builder,
so on its own it would reach everything the builder reaches. Hence:
- `--disable-host-loopback`: its gateway alias (10.0.2.2) does not lead to the
  builder's 127.0.0.1, where NATS, storage and the builder's own API listen;
- a firewall applied from the host side in the sandbox's namespace rejects the
  node's own addresses (found at run time), the gateway alias, link-local
  addresses (a cloud's metadata service) and any networks the operator names
  (a cluster's pod and service ranges); user code has no CAP_NET_ADMIN, so it
  cannot change it. IPv6 has no route out at all.
DNS goes to slirp's resolver (10.0.2.3), which forwards to the builder's.
slirp4netns exits when its exit pipe closes: when the sandbox ends, and when
the builder dies, even by SIGKILL (the kernel closes the builder's end)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from kiln_common.errors import FailedPrecondition
from kiln_common.proc import ProcessError, helper, run

# slirp4netns's fixed layout for its default 10.0.2.0/24 network.
GATEWAY = "10.0.2.2"  # slirp's alias for the host
RESOLVER = "10.0.2.3"
RESOLV_CONF = f"# Kiln sandbox: slirp4netns's resolver\nnameserver {RESOLVER}\n"
TAP = "tap0"
READY_SECONDS = 10.0
# Always refused, whatever the operator adds: link-local holds cloud metadata services.
ALWAYS_BLOCKED = ("169.254.0.0/16",)


def node_addresses(ip_json: str) -> list[str]:
    """The addresses of every interface in `ip -j address` output."""
    found = []
    for interface in json.loads(ip_json):
        for info in interface.get("addr_info", []):
            if "local" in info:
                found.append(str(ipaddress.ip_address(info["local"])))
    return found


def firewall_rules(blocked: Sequence[str]) -> str:
    """An nft ruleset for the sandbox's namespace: its own loopback and slirp's
    resolver are allowed, every blocked IPv4 address or network is rejected
    (TCP with a reset, so a connect fails at once), and IPv6 leaves nowhere."""
    nets = sorted({str(ipaddress.ip_network(b, strict=False)) for b in (*blocked, GATEWAY)})
    v4 = ", ".join(n for n in nets if ipaddress.ip_network(n).version == 4)
    return "\n".join([
        "table inet kiln_sandbox {",
        "  chain output {",
        "    type filter hook output priority 0; policy accept;",
        '    oifname "lo" accept',
        f"    ip daddr {RESOLVER} udp dport 53 accept",
        f"    ip daddr {RESOLVER} tcp dport 53 accept",
        f"    ip daddr {{ {v4} }} meta l4proto tcp reject with tcp reset",
        f"    ip daddr {{ {v4} }} reject with icmpx type admin-prohibited",
        "    meta nfproto ipv6 reject with icmpx type admin-prohibited",
        "  }",
        "}",
        "",
    ])  # fmt: skip


def slirp_argv(pid: int, ready_fd: int, exit_fd: int) -> list[str]:
    return [
        "slirp4netns",
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        # slirp4netns parses the sandbox's packets: it runs in its own mount
        # namespace, with capabilities dropped and a seccomp filter.
        "--enable-sandbox",
        "--enable-seccomp",
        f"--ready-fd={ready_fd}",
        f"--exit-fd={exit_fd}",
        str(pid),
        TAP,
    ]


async def read_fd(fd: int, done: Callable[[bytes], bool]) -> bytes:
    """Reads a pipe until done(data) or end of file, without blocking the loop."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    data = b""
    while not done(data):
        readable = loop.create_future()
        loop.add_reader(fd, readable.set_result, None)
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    return data


async def blocked_addresses(extra: Sequence[str]) -> list[str]:
    own = node_addresses((await run(["ip", "-j", "address", "show"], log_output=False)).stdout)
    return [*ALWAYS_BLOCKED, *extra, *(a for a in own if ipaddress.ip_address(a).version == 4)]


@contextlib.asynccontextmanager
async def user_network(pid: int, extra_blocked: Sequence[str]) -> AsyncIterator[None]:
    """Gives the network namespace of pid (the sandbox's first process, held
    before its command starts) a firewalled way out; removed on exit."""
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    try:
        async with helper(slirp_argv(pid, ready_w, exit_r), pass_fds=(ready_w, exit_r)):
            os.close(ready_w)
            os.close(exit_r)
            ready_w = exit_r = -1
            try:
                async with asyncio.timeout(READY_SECONDS):
                    said = await read_fd(ready_r, lambda data: data != b"")
            except TimeoutError:
                said = b""
            if said != b"1":
                raise FailedPrecondition("the sandbox's network (slirp4netns) did not start")
            await _firewall(pid, await blocked_addresses(extra_blocked))
            yield
    finally:
        for fd in (ready_r, ready_w, exit_r, exit_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


async def _firewall(pid: int, blocked: Sequence[str]) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="kiln-nft-", suffix=".nft") as rules:
        rules.write(firewall_rules(blocked))
        rules.flush()
        try:
            await run(["nsenter", f"--net=/proc/{pid}/ns/net", "nft", "-f", rules.name])
        except ProcessError as exc:
            raise FailedPrecondition(f"the sandbox's firewall could not be set: {exc}") from exc


def resolv_conf(directory: Path) -> Path:
    path = directory / "resolv.conf"
    path.write_text(RESOLV_CONF)
    return path
