"""The builder's own fetches through its egress proxy, against real HTTP servers
on this machine's loopback only: 127.0.0.1 is allowed (one machine), 127.0.0.2
is declared denied. A base image URL on the denied address is refused directly
and through a redirect from the allowed server, and the denied server never
sees a connection; a recipe whose mirror is denied fails before anything runs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ImageServer

from kiln_builder.base.download import FetchLimits, Pin, fetch_url
from kiln_builder.egress import EgressPolicy, EgressRefused, Route
from kiln_builder.egress_proxy import EgressProxy
from kiln_builder.engine import Bake, BakeOptions
from kiln_recipe import load_recipe

POLICY = EgressPolicy(allow_loopback=True, denied=("127.0.0.2/32",))
BASE = b"a base image, as far as this test cares\n" * 1000
SHA256 = hashlib.sha256(BASE).hexdigest()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ImageServer, ImageServer]]:
    (tmp_path / "served").mkdir()
    (tmp_path / "served/base.img").write_bytes(BASE)
    served = tmp_path / "served"
    with ImageServer(served) as allowed, ImageServer(served, "127.0.0.2") as denied:
        allowed.redirects["/elsewhere.img"] = f"{denied.url}/base.img"
        allowed.redirects["/here.img"] = f"{allowed.url}/base.img"
        yield allowed, denied


async def test_an_allowed_base_comes_through_the_proxy(
    servers: tuple[ImageServer, ImageServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, denied = servers
    # urllib's own proxy handling would let this bypass the proxy; the route's does not.
    monkeypatch.setenv("no_proxy", "*")
    async with EgressProxy(POLICY) as proxy:
        base = await fetch_url(f"{allowed.url}/here.img", Pin(SHA256), tmp_path / "cache",
                               FetchLimits(), Route(POLICY, proxy.url))  # fmt: skip
    assert base.path.read_bytes() == BASE
    assert proxy.served == 2  # the redirect, then the image: both through the proxy
    assert denied.connections == 0


async def test_a_denied_loopback_address_is_refused_directly_and_through_a_redirect(
    servers: tuple[ImageServer, ImageServer], tmp_path: Path
) -> None:
    allowed, denied = servers
    async with EgressProxy(POLICY) as proxy:
        route = Route(POLICY, proxy.url)
        with pytest.raises(EgressRefused, match=r"127\.0\.0\.2 is in a network"):
            await fetch_url(
                f"{denied.url}/base.img", Pin(SHA256), tmp_path / "c", FetchLimits(), route
            )
        with pytest.raises(EgressRefused, match="redirected to"):
            await fetch_url(f"{allowed.url}/elsewhere.img", Pin(SHA256), tmp_path / "c",
                            FetchLimits(), route)  # fmt: skip
    assert denied.connections == 0
    assert allowed.gets("elsewhere.img")  # asked, and its answer was not followed
    assert not list((tmp_path / "c").glob("*.part"))


async def test_a_recipe_whose_mirror_is_denied_fails_before_anything_runs(
    servers: tuple[ImageServer, ImageServer], tmp_path: Path
) -> None:
    _, denied = servers
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: denied\nversion: '1'\nfrom:\n  bootstrap: {distro: debian, release: bookworm,"
        f" mirror: '{denied.url}/debian'}}\noutputs: [tar]\n"
    )
    options = BakeOptions(
        tmp_path / "out", tmp_path / "work", tmp_path / "cache", "denied", egress=POLICY
    )
    with pytest.raises(EgressRefused, match=r"from\.bootstrap\.mirror"):
        await Bake(load_recipe(recipe), options).run()
    assert denied.connections == 0
    assert not (tmp_path / "work/denied").exists()
