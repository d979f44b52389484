"""The three requirement profiles on a real Debian bookworm tree: the engine's
cached bootstrap layer, finished as the engine finishes it (sysprep, then the
boot configuration its disk step writes), checked with the real files of a
merged-/usr system (relative /lib -> usr/lib links, real presets, modules.dep)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _bootstrap_into
from support import scratch

from kiln_builder import checks, customize, disk
from kiln_builder.checks import CheckResult, Facts, Tree
from kiln_builder.imageroot import ImageRoot
from kiln_recipe.schema import SYSPREP_OPERATIONS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.build,  # bootstraps when the layer cache is empty
    pytest.mark.skipif(os.geteuid() != 0, reason="a root tree needs root (owners, device nodes)"),
]

FACTS = Facts(outputs=("qcow2", "ext3.bz2"), root_fs="ext4", partitioned=True, bare=True)


@pytest.fixture(scope="module")
def finished_tree(request: pytest.FixtureRequest) -> Iterator[Path]:
    with scratch(request, "checks") as where:
        root = where / "root"
        asyncio.run(_bootstrap_into(root))
        customize.sysprep(root, SYSPREP_OPERATIONS)
        uuid = "0b6f3a1e-3c2d-4f5a-9b1c-2d3e4f5a6b7c"
        disk.configure_boot(ImageRoot(root), fs_type="ext4", fs_uuid=uuid, title="checks 1",
                            partitioning="gpt")  # fmt: skip
        yield root


@pytest.fixture(scope="module")
def found(finished_tree: Path) -> dict[str, CheckResult]:
    report = checks.run(finished_tree, [("tycoon", False), ("stratuslab", False),
                                        ("cloud", True)], FACTS)  # fmt: skip
    return {r.rule: r for r in report.results}


def test_the_cloud_profile_passes_but_for_cloud_init(found: dict[str, CheckResult]) -> None:
    kernel = next(iter(found["cloud.virtio"].file.split("/")[3:4]), "")
    assert found["cloud.virtio"].passed and kernel.endswith("-amd64"), found["cloud.virtio"]
    grow = found["cloud.growable-root"]
    assert grow.passed and grow.file.endswith("multi-user.target.wants/kiln-growroot.service")
    assert "/usr/bin/growpart" in grow.why  # cloud-guest-utils is in the bootstrap
    serial = found["cloud.serial-console"]
    assert (serial.passed, serial.file) == (True, "/boot/grub/grub.cfg")
    assert serial.why.startswith("console=ttyS0,115200n8")
    context = found["cloud.contextualisation"]
    assert (context.passed, context.advisory, context.file) == (False, True, "/usr/bin/cloud-init")


def test_stratuslab_sees_sysprep_and_dhcp_but_no_ssh_config_or_firewall(
    found: dict[str, CheckResult],
) -> None:
    dhcp = found["stratuslab.dhcp"]
    assert (dhcp.passed, dhcp.file) == (True, "/etc/systemd/network/80-kiln-dhcp.network")
    for rule in ("no-persistent-net", "no-host-keys", "no-passwords", "no-private-keys",
                 "minimal-services"):  # fmt: skip
        assert found[f"stratuslab.{rule}"].passed, found[f"stratuslab.{rule}"]
    keys_only = found["stratuslab.ssh-keys-only"]
    assert (keys_only.passed, keys_only.file) == (False, "/etc/ssh/sshd_config")
    assert not found["stratuslab.firewall"].passed


def test_tycoon_wants_openssh_and_etc_hosts(found: dict[str, CheckResult]) -> None:
    ssh = found["tycoon.ssh-enabled"]
    assert (ssh.passed, ssh.file) == (False, "/usr/sbin/sshd")
    hosts = found["tycoon.network-config"]
    assert (hosts.passed, hosts.file, hosts.why) == (False, "/etc/hosts", "missing")
    console = found["tycoon.console"]
    assert console.passed and console.file.endswith("getty.target.wants/getty@tty1.service")
    assert found["tycoon.shadow-passwords"].passed and found["tycoon.home"].passed
    assert found["tycoon.ext3-image"].passed


def test_a_root_hash_left_by_a_script_fails_stratuslab(finished_tree: Path) -> None:
    shadow = finished_tree / "etc/shadow"
    before = shadow.read_text()
    try:
        shadow.write_text(before.replace("root:*:", "root:$y$j9T$abc$def:", 1))
        report = checks.run(finished_tree, [("stratuslab", False)], FACTS)
        failed = {r.rule: r for r in report.failures}
        assert set(failed) >= {"stratuslab.no-passwords"}
        assert "root" in failed["stratuslab.no-passwords"].why
    finally:
        shadow.write_text(before)


def test_the_real_tree_resolves_merged_usr_links_inside(finished_tree: Path) -> None:
    tree = Tree(finished_tree)
    assert (finished_tree / "lib").is_symlink()
    host = tree.resolve("/lib/systemd/systemd")
    assert host is not None and host.is_relative_to(finished_tree)
    assert host == finished_tree / "usr/lib/systemd/systemd"
