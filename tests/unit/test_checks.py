"""Requirement checks on small synthetic image trees: each profile passes on a
tree that meets it, each rule fails (naming its file and why) when the tree
breaks it, and no symlink in an image reaches a host file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO

from kiln_builder import checks
from kiln_builder.checks import CheckReport, ChecksFailed, Facts, Tree
from kiln_builder.checks.services import enablement
from kiln_builder.engine import Bake, BakeOptions
from kiln_builder.service.outcome import check_records
from kiln_builder.stages.checks import Checks
from kiln_cli.build_cmd import check_lines
from kiln_common.builds import CheckResult
from kiln_common.errors import FailedPrecondition
from kiln_recipe import parse_recipe

KERNEL = "6.1.0-1-amd64"
FACTS = Facts(outputs=("qcow2", "ext3.bz2"), root_fs="ext4", partitioned=True, bare=True)
NFTABLES = """table inet filter {
  chain input {
    type filter hook input priority 0; policy drop;
    tcp dport 22 accept
  }
}
"""
ALL = [("tycoon", False), ("stratuslab", False), ("cloud", False)]


def put(root: Path, path: str, text: str = "", mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def link(root: Path, path: str, to: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(to)


def unit(root: Path, name: str, wanted_by: str = "multi-user.target") -> None:
    """A vendor unit file, enabled as `systemctl enable` would."""
    put(root, f"/usr/lib/systemd/system/{name}", "[Unit]\n")
    if wanted_by:
        link(root, f"/etc/systemd/system/{wanted_by}.wants/{name}",
             f"/lib/systemd/system/{name}")  # fmt: skip


def good_tree(root: Path) -> Path:
    """A merged-/usr Debian-like tree that meets all three profiles."""
    for top in ("bin", "sbin", "lib"):
        link(root, f"/{top}", f"usr/{top}")
    put(root, "/usr/lib/systemd/systemd", mode=0o755)
    (root / "home").mkdir()
    put(
        root,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nkiln:x:1000:1000::/home/kiln:/bin/sh\n",
    )
    put(root, "/etc/shadow", "root:*:19000:0:99999:7:::\nkiln:!:19000:0:99999:7:::\n", 0o640)
    put(root, "/etc/machine-id", "")
    # ssh: installed, configured for keys only (through an Include), enabled
    put(root, "/usr/sbin/sshd", mode=0o755)
    put(root, "/etc/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\n"
        "KbdInteractiveAuthentication no\nUsePAM yes\n")  # fmt: skip
    put(root, "/etc/ssh/sshd_config.d/kiln.conf", "PasswordAuthentication no\n")
    put(root, "/etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA host\n")
    unit(root, "ssh.service")
    # network: DHCP on any Ethernet NIC through systemd-networkd
    put(root, "/etc/hosts", "127.0.0.1 localhost\n")
    put(root, "/etc/systemd/network/80-dhcp.network",
        "[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n")  # fmt: skip
    unit(root, "systemd-networkd.service")
    unit(root, "getty@.service", wanted_by="")
    link(root, "/etc/systemd/system/getty.target.wants/getty@tty1.service",
         "/lib/systemd/system/getty@.service")  # fmt: skip
    put(root, "/etc/nftables.conf", NFTABLES)
    unit(root, "nftables.service", wanted_by="sysinit.target")
    # cloud: virtio modules in the initramfs, cloud-init, growpart, serial console
    modules = f"/usr/lib/modules/{KERNEL}"
    put(root, f"{modules}/modules.builtin", "kernel/drivers/virtio/virtio.ko\n")
    put(root, f"{modules}/modules.dep", "kernel/drivers/block/virtio_blk.ko: \n"
        "kernel/drivers/net/virtio_net.ko.xz: kernel/net/core/failover.ko\n")  # fmt: skip
    put(root, "/etc/initramfs-tools/initramfs.conf", "MODULES=most\nCOMPRESS=zstd\n")
    put(root, f"/boot/initrd.img-{KERNEL}")
    put(root, "/usr/bin/cloud-init", mode=0o755)
    unit(root, "cloud-init.service", wanted_by="cloud-init.target")
    put(root, "/etc/cloud/cloud.cfg", "cloud_init_modules:\n - growpart\n - resizefs\n")
    put(root, "/usr/bin/growpart", mode=0o755)
    put(root, "/boot/grub/grub.cfg", f"menuentry x {{\n  linux /boot/vmlinuz-{KERNEL} "
        "root=UUID=1 ro console=tty0 console=ttyS0,115200n8\n}\n")  # fmt: skip
    return root


def results(root: Path, facts: Facts = FACTS) -> dict[str, checks.CheckResult]:
    return {r.rule: r for r in checks.run(root, ALL, facts).results}


# --- every profile passes on a tree that meets it -------------------------------------------


def test_a_tree_meeting_every_profile_passes_every_rule(tmp_path: Path) -> None:
    found = results(good_tree(tmp_path))
    failed = {rule: r.line() for rule, r in found.items() if not r.passed}
    assert failed == {}
    assert len(found) == sum(len(rules) for rules in checks.PROFILES.values())
    assert (
        found["tycoon.ssh-enabled"].file
        == "/etc/systemd/system/multi-user.target.wants/ssh.service"
    )
    assert found["stratuslab.ssh-keys-only"].file == "/etc/ssh/sshd_config.d/kiln.conf"
    assert found["cloud.serial-console"].why.startswith("console=ttyS0,115200n8")


def test_every_profile_has_readable_rules_named_after_it() -> None:
    assert set(checks.PROFILES) == {"tycoon", "stratuslab", "cloud"}
    for profile, rules in checks.PROFILES.items():
        assert rules
        for rule in rules:
            assert rule.id.startswith(f"{profile}.") and not rule.statement.endswith(".")
            assert "\n" not in rule.statement and len(rule.statement) < 120


# --- each rule fails, naming the file and why -----------------------------------------------

Break = Callable[[Path], None]
BREAKS: list[tuple[str, Break, str, str]] = [
    # tycoon
    (
        "tycoon.ssh-enabled",
        lambda r: (r / "usr/sbin/sshd").unlink(),
        "/usr/sbin/sshd",
        "not installed",
    ),
    (
        "tycoon.ssh-enabled",
        lambda r: (r / "etc/ssh/sshd_config").unlink(),
        "/etc/ssh/sshd_config",
        "missing",
    ),
    (
        "tycoon.ssh-enabled",
        lambda r: (r / "etc/systemd/system/multi-user.target.wants/ssh.service").unlink(),
        "/etc/systemd/system",
        "does not start at boot",
    ),
    (
        "tycoon.ssh-enabled",
        lambda r: link(r, "/etc/systemd/system/ssh.service", "/dev/null"),
        "/etc/systemd/system",
        "ssh.service is masked",
    ),
    ("tycoon.home", lambda r: (r / "home").rmdir(), "/home", "does not exist"),
    ("tycoon.network-config", lambda r: (r / "etc/hosts").unlink(), "/etc/hosts", "missing"),
    (
        "tycoon.network-config",
        lambda r: (r / "etc/systemd/network/80-dhcp.network").unlink(),
        "/etc/network/interfaces",
        "no configuration for a network interface",
    ),
    (
        "tycoon.console",
        lambda r: (
            (r / "etc/systemd/system/getty.target.wants/getty@tty1.service").unlink()
            or (r / "boot/grub/grub.cfg").unlink()
        ),
        "/etc/inittab",
        "no getty",
    ),
    (
        "tycoon.console",
        lambda r: put(r, "/etc/pam.d/login", "auth requisite pam_securetty.so\n"),
        "/etc/securetty",
        "lists no terminal",
    ),
    (
        "tycoon.shadow-passwords",
        lambda r: put(r, "/etc/passwd", "root:$6$salt$hash:0:0::/root:/bin/sh\n"),
        "/etc/passwd",
        "not shadowed) for: root",
    ),
    ("tycoon.shadow-passwords", lambda r: (r / "etc/shadow").unlink(), "/etc/shadow", "missing"),
    # stratuslab
    (
        "stratuslab.dhcp",
        lambda r: put(
            r,
            "/etc/systemd/network/80-dhcp.network",
            "[Match]\nName=en*\n[Network]\nAddress=10.0.0.2/24\n",
        ),
        "/etc/systemd/network/80-dhcp.network",
        "statically",
    ),
    (
        "stratuslab.dhcp",
        lambda r: (
            (r / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service").unlink()
            or put(r, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
        ),
        "/etc/systemd/network/80-dhcp.network",
        "not installed or not enabled",
    ),
    (
        "stratuslab.no-persistent-net",
        lambda r: put(
            r, "/etc/udev/rules.d/70-persistent-net.rules", 'SUBSYSTEM=="net", NAME="eth0"\n'
        ),
        "/etc/udev/rules.d/70-persistent-net.rules",
        "MAC",
    ),
    (
        "stratuslab.no-persistent-net",
        lambda r: put(r, "/usr/lib/udev/rules.d/75-persistent-net-generator.rules"),
        "/lib/udev/rules.d/75-persistent-net-generator.rules",
        "remove it",
    ),
    (
        "stratuslab.no-host-keys",
        lambda r: put(r, "/etc/ssh/ssh_host_ed25519_key", "-----BEGIN"),
        "/etc/ssh/ssh_host_ed25519_key",
        "shared by every copy",
    ),
    (
        "stratuslab.no-passwords",
        lambda r: put(r, "/etc/shadow", "root:$y$j9T$salt$hash:19000::::::\n"),
        "/etc/shadow",
        "root",
    ),
    (
        "stratuslab.no-passwords",
        lambda r: put(r, "/etc/shadow", "root:*:1::::::\nguest::1::::::\n"),
        "/etc/shadow",
        "guest",
    ),
    (
        "stratuslab.no-private-keys",
        lambda r: put(r, "/home/kiln/.ssh/id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        "/home/kiln/.ssh/id_ed25519",
        "private key",
    ),
    (
        "stratuslab.ssh-keys-only",
        lambda r: (r / "etc/ssh/sshd_config.d/kiln.conf").unlink(),
        "/etc/ssh/sshd_config",
        "PasswordAuthentication is not set",
    ),
    (
        "stratuslab.ssh-keys-only",
        lambda r: put(r, "/etc/ssh/sshd_config.d/00-first.conf", "PasswordAuthentication yes\n"),
        "/etc/ssh/sshd_config.d/00-first.conf",
        "PasswordAuthentication yes: set it to no",
    ),
    (
        "stratuslab.firewall",
        lambda r: (r / "etc/nftables.conf").unlink(),
        "/etc/nftables.conf",
        "no firewall",
    ),
    (
        "stratuslab.firewall",
        lambda r: (r / "etc/systemd/system/sysinit.target.wants/nftables.service").unlink(),
        "/etc/nftables.conf",
        "never loaded",
    ),
    (
        "stratuslab.minimal-services",
        lambda r: unit(r, "vsftpd.service"),
        "/etc/systemd/system/multi-user.target.wants/vsftpd.service",
        "ftp service",
    ),
    (
        "stratuslab.minimal-services",
        lambda r: put(
            r, "/etc/inetd.conf", "telnet stream tcp nowait root /usr/sbin/telnetd telnetd\n"
        ),
        "/etc/inetd.conf",
        "telnet",
    ),
    # cloud
    (
        "cloud.virtio",
        lambda r: put(r, f"/usr/lib/modules/{KERNEL}/modules.dep", "kernel/x.ko:\n"),
        f"/lib/modules/{KERNEL}/modules.dep",
        "has no virtio_blk",
    ),
    (
        "cloud.virtio",
        lambda r: put(r, "/etc/initramfs-tools/initramfs.conf", "MODULES=dep\n"),
        "/etc/initramfs-tools/initramfs.conf",
        "leaves out",
    ),
    ("cloud.virtio", lambda r: (r / f"boot/initrd.img-{KERNEL}").unlink(), "/boot", "no initramfs"),
    (
        "cloud.contextualisation",
        lambda r: (r / "usr/bin/cloud-init").unlink(),
        "/usr/bin/cloud-init",
        "no contextualisation agent",
    ),
    (
        "cloud.contextualisation",
        lambda r: put(r, "/etc/cloud/cloud-init.disabled"),
        "/etc/cloud/cloud-init.disabled",
        "disabled",
    ),
    (
        "cloud.growable-root",
        lambda r: (r / "usr/bin/growpart").unlink(),
        "/usr/bin/growpart",
        "cloud-guest-utils",
    ),
    (
        "cloud.growable-root",
        lambda r: put(r, "/etc/cloud/cloud.cfg", "cloud_init_modules: []\n"),
        "/etc/cloud/cloud.cfg",
        "nothing grows the root",
    ),
    (
        "cloud.serial-console",
        lambda r: put(r, "/boot/grub/grub.cfg", "linux /vmlinuz root=/dev/vda\n"),
        "/boot/grub/grub.cfg",
        "no console=ttyS0",
    ),
]


@pytest.mark.parametrize(("rule", "damage", "file", "why"), BREAKS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BREAKS)])  # fmt: skip
def test_a_tree_breaking_a_rule_fails_it_naming_file_and_why(
    tmp_path: Path, rule: str, damage: Break, file: str, why: str
) -> None:
    root = good_tree(tmp_path)
    damage(root)
    found = results(root)[rule]
    assert not found.passed, found
    assert found.file == file and why in found.why, found


def test_every_rule_has_a_failing_tree() -> None:
    broken = {b[0] for b in BREAKS}
    facts_only = {"tycoon.ext3-image", "cloud.bootable-disk"}
    every = {r.id for rules in checks.PROFILES.values() for r in rules}
    assert every - facts_only <= broken


def test_output_rules_read_the_facts(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    found = results(root, Facts(outputs=("qcow2",), partitioned=True))
    assert not found["tycoon.ext3-image"].passed
    assert "add ext3, ext3.bz2 or ext3.gz" in found["tycoon.ext3-image"].why
    xz = results(root, Facts(outputs=("ext3.xz",), partitioned=False, bare=True))
    assert "only bzip2 or gzip" in xz["tycoon.ext3-image"].why
    assert not xz["cloud.bootable-disk"].passed and xz["cloud.bootable-disk"].file == "outputs"


# --- enablement is read from links and presets -----------------------------------------------


def test_a_preset_enables_a_unit_only_at_first_boot(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    unit(root, "foo.service", wanted_by="")
    put(root, "/usr/lib/systemd/system-preset/90-x.preset", "enable foo.service\ndisable *\n")
    assert enablement(Tree(root), "foo.service").how == "preset (applied at first boot)"
    put(root, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    assert not enablement(Tree(root), "foo.service").enabled
    assert enablement(Tree(root), "absent.service").how == "not installed"


def test_a_sysv_script_without_a_unit_counts_by_its_rc_link(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    link(root, "/etc/rc2.d/S01telnetd", "../init.d/telnetd")
    found = results(root)["stratuslab.minimal-services"]
    assert not found.passed and found.file == "/etc/rc2.d/S01telnetd"


# --- the tree never leads out to the host ---------------------------------------------------


def test_an_absolute_symlink_resolves_inside_the_image(tmp_path: Path) -> None:
    host = tmp_path / "host-secret"
    host.write_text("root:$6$HOST:1::::::\n")
    root = good_tree(tmp_path / "image")
    link(root, "/etc/shadow", str(host))
    tree = Tree(root)
    assert tree.resolve("/etc/shadow") is None  # no such file inside the image
    assert tree.read_text("/etc/shadow") is None
    found = results(root)
    assert not found["tycoon.shadow-passwords"].passed  # missing, not the host's
    assert found["stratuslab.no-passwords"].passed  # the host's hash was never read


def test_dotdot_in_a_symlink_stops_at_the_image_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hosts").write_text("outside\n")
    root = good_tree(tmp_path / "image")
    link(root, "/etc/hosts", "../../../../../../etc/hosts")  # loops on itself inside
    shutil.rmtree(root / "etc/ssh")
    link(root, "/etc/ssh", "../../..")  # a directory link pointing above the root
    tree = Tree(root)
    assert tree.read_text("/etc/hosts") is None
    assert tree.resolve("/etc/ssh") == root
    assert tree.resolve("/etc/ssh/etc/passwd") == root / "etc/passwd"


def test_an_absolute_directory_symlink_is_followed_inside(tmp_path: Path) -> None:
    root = good_tree(tmp_path / "image")
    (root / "srv/ssh").mkdir(parents=True)
    (root / "etc/ssh/sshd_config").rename(root / "srv/ssh/sshd_config")
    link(root, "/etc/ssh/sshd_config", "/srv/ssh/sshd_config")
    assert Tree(root).resolve("/etc/ssh/sshd_config") == root / "srv/ssh/sshd_config"
    assert results(root)["tycoon.ssh-enabled"].passed


def test_a_symlink_loop_ends(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    link(root, "/etc/a", "/etc/b")
    link(root, "/etc/b", "a")
    assert Tree(root).resolve("/etc/a") is None


# --- the report ----------------------------------------------------------------------------


def test_an_advisory_profile_warns_and_does_not_block(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "usr/bin/cloud-init").unlink()  # and with it, cloud-init's growpart
    report = checks.run(root, [("cloud", True), ("tycoon", False)], FACTS)
    assert report.passed and not report.failures
    warned = [r for r in report.results if not r.passed]
    assert [r.rule for r in warned] == ["cloud.contextualisation", "cloud.growable-root"]
    assert warned[0].line().startswith("WARN cloud.contextualisation: /usr/bin/cloud-init: ")


def test_the_report_round_trips_through_json(tmp_path: Path) -> None:
    root = good_tree(tmp_path / "image")
    (root / "home").rmdir()
    report = checks.run(root, ALL, FACTS)
    report.write(tmp_path / "x.checks.json")
    data = json.loads((tmp_path / "x.checks.json").read_text())
    assert data["passed"] is False and data["profiles"][0] == {
        "profile": "tycoon",
        "advisory": False,
    }
    assert CheckReport.from_dict(data) == report
    assert {"profile", "rule", "statement", "passed", "advisory", "file", "why"} == set(
        data["results"][0]
    )


def test_a_failure_names_each_failed_rule_file_and_why(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "home").rmdir()
    (root / "etc/hosts").unlink()
    error = ChecksFailed.of(checks.run(root, ALL, FACTS))
    assert isinstance(error, FailedPrecondition)
    assert str(error) == (
        "2 requirement checks failed: tycoon.home (/home: does not exist: user accounts are "
        "created under /home); tycoon.network-config (/etc/hosts: missing)"
    )
    assert error.report is not None and len(error.report.failures) == 2


def test_results_become_record_messages_and_cli_lines(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    (root / "home").rmdir()
    messages = check_records(checks.run(root, [("tycoon", False)], FACTS))
    assert messages[2] == CheckResult(
        profile="tycoon", rule="tycoon.home", statement=checks.tycoon.RULES[2].statement,
        passed=False, advisory=False, file="/home",
        why="does not exist: user accounts are created under /home",
    )  # fmt: skip
    lines = check_lines(messages)
    assert lines[2].split(None, 2) == [
        "FAIL", "tycoon.home", "/home: does not exist: user accounts are created under /home"
    ]  # fmt: skip
    assert lines[0].startswith("PASS tycoon.ext3-image")


def test_unreadable_is_a_failed_rule_not_a_crash(tmp_path: Path) -> None:
    root = good_tree(tmp_path)
    os.mkfifo(root / "etc/hosts.fifo")
    link(root, "/etc/hosts", "/etc/hosts.fifo")
    found = results(root)["tycoon.network-config"]
    assert not found.passed and found.why == "missing"  # a FIFO is not read (it would block)


def test_every_rule_is_documented() -> None:
    text = (REPO / "docs/checks.md").read_text()
    missing = [r.id for rules in checks.PROFILES.values() for r in rules if f"`{r.id}`" not in text]
    assert not missing, f"docs/checks.md does not document: {missing}"


# --- the engine's step ----------------------------------------------------------------------

HEAD = 'name: web\nversion: "1"\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n'


def _bake(recipe_text: str, tmp_path: Path) -> Bake:
    options = BakeOptions(out_dir=tmp_path / "out", work_root=tmp_path / "work",
                          cache_dir=tmp_path / "cache", build_id="b1")  # fmt: skip
    return Bake(parse_recipe(recipe_text, tmp_path), options)


def test_the_engine_checks_after_sysprep_and_before_the_disk(tmp_path: Path) -> None:
    plan = _bake(HEAD + "checks: [tycoon]\n", tmp_path).plan()
    assert plan[plan.index("sysprep") + 1] == "checks" and plan.index("checks") < plan.index("disk")
    assert "checks" not in _bake(HEAD, tmp_path).plan()
    stages = _bake(HEAD + "checks: [cloud]\n", tmp_path).stages()
    assert [s.name for s in stages if "checks" in s.reads] == ["checks"]


async def test_the_checks_step_writes_its_report_then_fails_on_a_blocking_rule(
    tmp_path: Path,
) -> None:
    root = good_tree(tmp_path / "root")
    (root / "home").rmdir()
    (root / "usr/bin/cloud-init").unlink()
    text = HEAD + "outputs: [qcow2, ext3.gz]\nchecks: [tycoon, {profile: cloud, advisory: true}]\n"
    recipe = parse_recipe(text, tmp_path)
    report_file = tmp_path / "out/web-1.checks.json"
    with pytest.raises(ChecksFailed) as caught:
        await checks.check_tree(root, recipe, report_file)
    assert str(caught.value).startswith("1 requirement check failed: tycoon.home (/home: ")
    report = caught.value.report
    assert report is not None and report.path == report_file
    data = json.loads(report_file.read_text())
    assert data["passed"] is False
    assert data["profiles"] == [{"profile": "tycoon", "advisory": False},
                                {"profile": "cloud", "advisory": True}]  # fmt: skip
    warned = [r["rule"] for r in data["results"] if r["advisory"] and not r["passed"]]
    assert warned == ["cloud.contextualisation", "cloud.growable-root"]


async def test_the_checks_step_passes_with_only_advisory_failures(tmp_path: Path) -> None:
    root = good_tree(tmp_path / "root")
    (root / "usr/bin/cloud-init").unlink()
    recipe = parse_recipe(HEAD + "checks: [{profile: cloud, advisory: true}]\n", tmp_path)
    report = await checks.check_tree(root, recipe, tmp_path / "out/web-1.checks.json")
    assert report.passed and report.path is not None and report.path.is_file()


async def test_the_engine_step_checks_the_tree_with_its_boot_configuration(tmp_path: Path) -> None:
    """From scratch, the tree is checked as the disk will hold it: the GRUB menu
    with its serial console and the DHCP network are written first. A failure
    keeps every result for the build record."""
    bake = _bake(HEAD + "outputs: [ext3.gz]\nchecks: [tycoon, cloud]\n", tmp_path)
    bake.rootdir = good_tree(tmp_path / "root")
    put(bake.rootdir, f"/boot/vmlinuz-{KERNEL}")
    (bake.rootdir / "boot/grub/grub.cfg").unlink()
    (bake.rootdir / "etc/systemd/network/80-dhcp.network").unlink()
    (bake.rootdir / "home").rmdir()
    with pytest.raises(ChecksFailed) as caught:
        async with contextlib.AsyncExitStack() as held:
            await bake.run_stage(Checks(), held)
    assert str(caught.value).startswith("step checks failed: 2 requirement checks failed: ")
    assert bake.steps[-1].name == "checks"
    assert bake.check_report is not None
    found = {r.rule: r for r in bake.check_report.results}
    assert [r.rule for r in bake.check_report.failures] == ["tycoon.home", "cloud.bootable-disk"]
    assert found["cloud.serial-console"].file == "/boot/grub/grub.cfg"
    assert found["tycoon.network-config"].file == "/etc/systemd/network/80-kiln-dhcp.network"
    assert (tmp_path / "out/web-1.checks.json").is_file()
