"""The hardened sandbox's command lines, firewall and #! handling (no root
resources: tests/integration/test_sandbox_hardened.py runs them for real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from kiln_builder.customize import image_executable, require_executable, script_command
from kiln_builder.isolation.network import firewall_rules, node_addresses, slirp_argv
from kiln_builder.isolation.sandbox import CAPABILITIES, sandbox_argv
from kiln_builder.service.settings import BuilderSettings
from kiln_common.errors import FailedPrecondition, InvalidArgument

FORBIDDEN = [
    "CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_NET_ADMIN",
    "CAP_NET_RAW", "CAP_SYS_RAWIO", "CAP_SYS_BOOT", "CAP_SYS_TIME", "CAP_BPF", "CAP_PERFMON",
    "CAP_SYSLOG", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_SETPCAP",
    "CAP_SYS_RESOURCE", "CAP_LINUX_IMMUTABLE", "CAP_IPC_OWNER", "CAP_AUDIT_CONTROL",
]  # fmt: skip


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def test_the_sandbox_drops_every_capability_then_adds_back_only_the_listed_few() -> None:
    argv = sandbox_argv(Path("/img"), ["true"], info_fd=7, block_fd=8)
    options = argv[: argv.index("--")]
    assert _pairs(options, "--cap-drop") == ["ALL"]
    assert options.index("--cap-drop") < options.index("--cap-add")
    assert _pairs(options, "--cap-add") == list(CAPABILITIES)
    assert not set(FORBIDDEN) & set(CAPABILITIES)


def test_the_sandbox_has_its_own_namespaces_and_a_read_only_proc_sys() -> None:
    argv = sandbox_argv(Path("/img"), ["apt-get", "update"], info_fd=7, block_fd=8)
    options = argv[: argv.index("--")]
    for flag in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts"):
        assert flag in options
    assert "--share-net" not in options and "--die-with-parent" in options
    assert options[options.index("--proc") + 2 : options.index("--proc") + 5] == [
        "--ro-bind", "/proc/sys", "/proc/sys",
    ]  # fmt: skip
    assert _pairs(options, "--info-fd") == ["7"] and _pairs(options, "--block-fd") == ["8"]
    assert argv[-3:] == ["--", "apt-get", "update"]


def test_slirp_cannot_reach_the_builders_loopback_and_dies_with_its_pipe() -> None:
    argv = slirp_argv(1234, 5, 6)
    assert "--disable-host-loopback" in argv
    assert "--ready-fd=5" in argv and "--exit-fd=6" in argv
    assert "--enable-sandbox" in argv and argv[-2:] == ["1234", "tap0"]


def test_the_firewall_rejects_the_nodes_addresses_the_host_alias_and_link_local() -> None:
    rules = firewall_rules(["192.0.2.2", "127.0.0.1", "169.254.0.0/16", "10.96.0.0/12"])
    reject = next(line for line in rules.splitlines() if "tcp reset" in line)
    for blocked in ("192.0.2.2", "127.0.0.1", "169.254.0.0/16", "10.96.0.0/12", "10.0.2.2"):
        assert blocked in reject
    # The resolver is let through before anything is rejected; IPv6 goes nowhere.
    assert rules.index("10.0.2.3 udp dport 53 accept") < rules.index("reject")
    assert "meta nfproto ipv6 reject" in rules


def test_node_addresses_come_from_ip_json() -> None:
    data = [
        {"ifname": "lo", "addr_info": [{"local": "127.0.0.1"}, {"local": "::1"}]},
        {"ifname": "eth0", "addr_info": [{"local": "192.0.2.2"}, {"family": "inet"}]},
    ]
    assert node_addresses(json.dumps(data)) == ["127.0.0.1", "::1", "192.0.2.2"]


@pytest.mark.parametrize(
    ("first_line", "command"),
    [
        (b"#!/bin/bash", ["/bin/bash"]),
        (b"#! /bin/bash -eu", ["/bin/bash", "-eu"]),
        (b"#!/usr/bin/env python3", ["/usr/bin/env", "python3"]),
        (b"#!/usr/bin/perl -w -T", ["/usr/bin/perl", "-w -T"]),  # one argument, as Linux does
        (b"echo no interpreter named", ["/bin/sh", "-e"]),
        (b"", ["/bin/sh", "-e"]),
    ],
)
def test_a_script_runs_with_the_interpreter_its_first_line_names(
    first_line: bytes, command: list[str]
) -> None:
    assert script_command(first_line + b"\necho hi\n", "setup.sh") == command


def test_a_relative_interpreter_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="absolute path"):
        script_command(b"#!bash\n", "setup.sh")


def _image(tmp_path: Path) -> Path:
    """A merged-/usr image: /bin is a symlink to usr/bin, sh a relative link."""
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin/dash").write_text("")
    (root / "usr/bin/dash").chmod(0o755)
    (root / "usr/bin/sh").symlink_to("dash")
    (root / "usr/bin/escape").symlink_to("/../../../../bin/true")  # not the host's
    (root / "usr/bin/data").write_text("")
    return root


def test_interpreters_are_looked_up_inside_the_image_never_on_the_host(tmp_path: Path) -> None:
    root = _image(tmp_path)
    assert image_executable(root, "/bin/sh") and image_executable(root, "/usr/bin/dash")
    assert not image_executable(root, "/usr/bin/escape")  # /bin/true exists on the host only
    assert not image_executable(root, "/usr/bin/data")  # not executable
    assert not image_executable(root, "/bin/bash")


def test_a_missing_interpreter_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"setup.sh asks for /bin/zsh \(its #! line\)"):
        require_executable(_image(tmp_path), "/bin/zsh", "setup.sh")


def test_sandbox_limits_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_BUILDER_SANDBOX_MEMORY_MIB", "512")
    monkeypatch.setenv("KILN_BUILDER_SANDBOX_TIMEOUT_SECONDS", "0")
    monkeypatch.setenv("KILN_BUILDER_SANDBOX_BLOCKED_NETWORKS", '["10.96.0.0/12"]')
    policy = BuilderSettings().sandbox_policy()
    assert policy.memory_bytes == 512 * 1024**2 and policy.max_pids == 4096
    assert policy.timeout is None and policy.blocked_networks == ("10.96.0.0/12",)
    monkeypatch.setenv("KILN_BUILDER_SANDBOX_BLOCKED_NETWORKS", '["10.96.0.0/99"]')
    with pytest.raises(ValidationError, match=r"10\.96\.0\.0/99"):
        BuilderSettings()
