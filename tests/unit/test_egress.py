"""The builder's own fetches obey an egress policy: link-local, metadata and
(on a cluster) loopback addresses are refused before any connection is made;
the proxy connects to the very address it checked; a host name that could
reach a command line or QEMU's option syntax is refused at the recipe check.
Every connection here is to this machine's loopback, or none at all."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kiln_builder import egress, egress_proxy
from kiln_builder.base import download
from kiln_builder.base.download import FetchLimits, Pin, fetch_url
from kiln_builder.egress import LOCAL, STRICT, EgressPolicy, EgressRefused, Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.isolation.appliance.network import netdev_args, relays
from kiln_common.errors import InvalidArgument
from kiln_recipe import RecipeError, load_recipe

METADATA = [
    "169.254.169.254", "fe80::1", "fd00:ec2::254", "100.100.100.200", "::ffff:169.254.1.1",
    "64:ff9b::a9fe:a9fe", "::169.254.169.254", "2002:a9fe:a9fe::1", "64:ff9b:1::a9fe:a9fe",
]  # fmt: skip


@pytest.mark.parametrize("address", METADATA)
def test_link_local_and_metadata_addresses_are_always_refused(address: str) -> None:
    for policy in (STRICT, LOCAL, EgressPolicy(allow_loopback=True, denied=("10.0.0.0/8",))):
        assert policy.refusal(address) is not None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
def test_loopback_is_refused_on_a_cluster_and_allowed_on_one_machine(address: str) -> None:
    assert "loopback" in (STRICT.refusal(address) or "")
    assert LOCAL.refusal(address) is None


@pytest.mark.parametrize("address", ["10.96.0.1", "172.20.1.1", "192.168.1.10", "100.64.0.1",
                                     "fd12::1", "64:ff9b::a60:1"])  # fmt: skip
def test_private_networks_are_refused_on_a_cluster_and_allowed_on_one_machine(
    address: str,
) -> None:
    """A cluster's pods, services and nodes live in private networks, whether
    or not the operator named them."""
    assert STRICT.refusal(address) is not None
    assert LOCAL.refusal(address) is None
    assert EgressPolicy(allowed=("10.0.0.0/8", "64:ff9b::a60:0/120")).refusal("10.96.0.1") is None


def test_a_public_address_through_nat64_is_allowed() -> None:
    assert STRICT.refusal("64:ff9b::cb00:7150") is None  # 203.0.113.80
    assert STRICT.refusal("198.51.100.7") is None


def test_denied_networks_are_refused_and_the_allow_list_wins() -> None:
    policy = EgressPolicy(denied=("10.96.0.0/12", "192.0.2.7/32"), allowed=("10.96.5.0/24",))
    assert "private" in (policy.refusal("10.96.0.1") or "")
    assert "deny" in (policy.refusal("192.0.2.7") or "")
    assert "192.0.2.7/32" not in (policy.refusal("192.0.2.7") or "")  # the operator's, not said
    assert policy.refusal("10.96.5.9") is None  # an internal mirror, allow-listed
    assert policy.refusal("198.51.100.1") is None
    assert policy.refusal("0.0.0.0") is not None and policy.refusal("224.0.0.1") is not None
    with pytest.raises(ValueError):
        EgressPolicy(denied=("not-a-network",))


def fixed(answers: dict[str, list[str]]) -> egress.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    return resolve


async def test_a_name_mixing_in_a_forbidden_address_is_refused() -> None:
    policy = EgressPolicy(resolver=fixed({"mirror.test": ["198.51.100.1", "169.254.169.254"]}))
    with pytest.raises(EgressRefused, match=r"169\.254\.169\.254 is link-local"):
        await policy.addresses("mirror.test", 80)


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Records (and refuses) every connection the proxy would open upstream."""
    attempts: list[tuple[Any, ...]] = []

    async def connect(addresses: Any, port: int) -> None:
        attempts.append((tuple(addresses), port))
        return None

    monkeypatch.setattr(egress_proxy, "_connect", connect)
    return attempts


async def ask(proxy: EgressProxy, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_the_proxy_refuses_metadata_before_any_connection(
    no_connection: list[tuple[Any, ...]],
) -> None:
    policy = EgressPolicy(resolver=fixed({"metadata.test": ["169.254.169.254"]}))
    async with EgressProxy(policy) as proxy:
        tunnel = await ask(proxy, b"CONNECT metadata.test:443 HTTP/1.1\r\n\r\n")
        plain = await ask(proxy, b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\n\r\n")
        bad = await ask(proxy, b"GET http://x,restrict=off/ HTTP/1.1\r\n\r\n")
        ports = [await ask(proxy, f"CONNECT mirror.test:{p} HTTP/1.1\r\n\r\n".encode())
                 for p in ("-1", "99999", "1_0", "x")]  # fmt: skip
    assert tunnel.startswith(b"HTTP/1.1 403") and b"link-local" in tunnel
    assert plain.startswith(b"HTTP/1.1 403")
    assert bad.startswith(b"HTTP/1.1 4")
    assert all(answer.startswith(b"HTTP/1.1 400") for answer in ports)
    assert no_connection == []
    assert len(proxy.refusals) == 3


async def test_a_refused_base_url_is_never_requested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any) -> int:
        raise AssertionError("the download started")

    monkeypatch.setattr(download, "_download", never)
    route = Route(STRICT, "http://127.0.0.1:9")  # the proxy is never reached either
    for url in ("http://169.254.169.254/base.qcow2", "http://127.0.0.1:4222/x", "http://[::1]/x"):
        with pytest.raises(EgressRefused, match=r"from\.image\.url"):
            await fetch_url(url, Pin("0" * 64), tmp_path, FetchLimits(), route)


async def test_a_connection_is_kept_alive_for_one_host_only(tmp_path: Path) -> None:
    """apt pipelines its requests on one connection: those for the same host
    share one connection upstream; one for another host is checked on its own
    (refused here) and never reaches the first server."""
    from support import ImageServer

    (tmp_path / "a").write_bytes(b"first\n")
    (tmp_path / "b").write_bytes(b"second\n")
    with ImageServer(tmp_path, keep_alive=True) as server:
        port = server.httpd.server_address[1]
        same = "".join(
            f"GET http://127.0.0.1:{port}/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            for name in ("a", "b")
        )
        other = "GET http://169.254.169.254/secret HTTP/1.1\r\nHost: x\r\n\r\n"
        async with EgressProxy(LOCAL) as proxy:
            answer = await ask(proxy, (same + other).encode())
    assert answer.count(b"HTTP/1.1 200") == 2 and b"first\n" in answer and b"second\n" in answer
    assert answer.rstrip().endswith(b"link-local (a cloud's metadata service lives there)"
                                    b" (169.254.0.0/16)")  # fmt: skip
    assert proxy.served == 1 and server.connections == 1
    assert [r["path"] for r in server.requests] == ["/a", "/b"]


async def test_the_proxy_connects_to_the_address_it_checked(tmp_path: Path) -> None:
    """DNS rebinding: the name resolves to an allowed loopback address for the
    first request and to a denied one afterwards; the first request reaches the
    allowed server, the second is refused, and the denied one sees nothing."""
    from support import ImageServer

    (tmp_path / "ok").write_bytes(b"allowed\n")
    calls: list[str] = []
    with ImageServer(tmp_path) as allowed, ImageServer(tmp_path, "127.0.0.2") as denied:
        port = allowed.httpd.server_address[1]

        async def rebinding(host: str, _: int) -> list[str]:
            calls.append(host)
            return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

        policy = EgressPolicy(allow_loopback=True, denied=("127.0.0.2/32",), resolver=rebinding)
        request = f"GET http://rebind.test:{port}/ok HTTP/1.1\r\nHost: rebind.test\r\n\r\n"
        async with EgressProxy(policy) as proxy:
            first = await ask(proxy, request.encode())
            second = await ask(proxy, request.encode())
    assert first.startswith(b"HTTP/1.0 200") and first.endswith(b"allowed\n")
    assert second.startswith(b"HTTP/1.1 403") and b"127.0.0.2" in second
    assert allowed.gets("ok") and denied.connections == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://x,restrict=off/debian",
        "http://mirror.test/debian [trusted=yes]",
        "http://a b/",
        "http://user:secret@mirror.test/",
        "http://mirror.test:99999/",
        "http://mirror.test/\ndeb http://evil/",
        "ftp://mirror.test/",
        "http://-bad-.test/",
    ],
)
def test_a_mirror_that_could_smuggle_options_is_refused_at_the_recipe_check(
    tmp_path: Path, url: str
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: x\nversion: '1'\nfrom:\n  bootstrap: {distro: debian, release: bookworm, "
        f"mirror: {url!r}}}\noutputs: [raw]\n"
    )
    with pytest.raises(RecipeError, match=r"from\.bootstrap\.mirror"):
        load_recipe(recipe)
    with pytest.raises(InvalidArgument):
        relays([url])


def test_relays_connect_through_the_proxy_and_add_no_qemu_option() -> None:
    found = relays(
        ["http://mirror.test/debian", "https://other.test:8443/x"], "http://127.0.0.1:3128"
    )
    args = netdev_args(found)
    option = args[1]
    assert option.startswith("user,id=net0,restrict=on,guestfwd=")
    # Every comma is QEMU's: the options, or socat's doubled one.
    fields = option.replace(",,", "\0").split(",")
    assert [f.split("=")[0] for f in fields] == ["user", "id", "restrict", "guestfwd", "guestfwd"]
    assert "PROXY:127.0.0.1:mirror.test:80\0proxyport=3128" in fields[3]
    assert "PROXY:127.0.0.1:other.test:8443\0proxyport=3128" in fields[4]
