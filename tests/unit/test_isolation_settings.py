"""A builder not told its cluster's networks guesses none: it refuses sandbox
builds (or runs them in vm, if so set) and says which, in its settings' answer
and in the build's isolation reason; the node's address is refused like the
pod's own, to the sandbox and to the builder's own fetches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kiln_builder.engine import Bake, BakeOptions
from kiln_builder.service.settings import BuilderSettings
from kiln_common.errors import FailedPrecondition
from kiln_recipe import load_recipe

RECIPE = """\
name: iso
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "true"
outputs: [tar]
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("KILN_BUILDER_")]:
        monkeypatch.delenv(key)


def test_unset_cluster_networks_refuse_sandbox_builds_by_default() -> None:
    settings = BuilderSettings()
    assert settings.cluster_networks is None
    assert "sandbox builds are refused" in settings.unconfigured()
    assert settings.isolation_options() == {"sandbox_refused": settings.unconfigured()}


def test_unset_cluster_networks_can_send_every_build_to_vm() -> None:
    settings = BuilderSettings(unconfigured_networks="vm")
    options = settings.isolation_options()
    assert options["force_vm"] is True and "sandbox builds run in vm" in options["force_vm_why"]


def test_named_networks_and_the_node_are_refused_to_the_sandbox_and_to_fetches() -> None:
    settings = BuilderSettings(cluster_networks=["10.96.0.0/12"], node_ip="192.0.2.10")
    assert settings.unconfigured() == "" and settings.isolation_options() == {"sandbox_refused": ""}
    assert set(settings.sandbox_policy().blocked_networks) == {"10.96.0.0/12", "192.0.2.10/32"}
    policy = settings.egress_policy()
    assert policy.refusal("10.100.0.1") and policy.refusal("192.0.2.10")
    assert policy.refusal("127.0.0.1")  # no loopback on a cluster
    assert BuilderSettings(cluster_networks=[]).unconfigured() == ""  # one machine, said so


def test_forced_vm_wins_and_says_so() -> None:
    options = BuilderSettings(force_vm=True).isolation_options()
    assert options == {"force_vm": True, "force_vm_why": "forced by the builder's setting"}


def test_a_refused_sandbox_build_fails_before_anything_runs(tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(RECIPE)
    why = BuilderSettings().unconfigured()
    options = BakeOptions(tmp_path / "o", tmp_path / "w", tmp_path / "c", "b", sandbox_refused=why)
    bake = Bake(load_recipe(recipe_file), options)
    assert (bake.isolation, bake.isolation_reason) == ("sandbox", "the recipe's")
    with pytest.raises(FailedPrecondition, match=r"sandbox builds are refused.*isolation: vm"):
        asyncio.run(bake.run())
    assert not (tmp_path / "w").exists()
    in_vm = Bake(load_recipe(recipe_file), BakeOptions(tmp_path / "o", tmp_path / "w",
                 tmp_path / "c", "b", force_vm=True, force_vm_why=why))  # fmt: skip
    assert (in_vm.isolation, in_vm.isolation_reason) == ("vm", why)
