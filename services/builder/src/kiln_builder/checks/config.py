"""The image's configuration as the programs that read it would see it:
sshd's settings, accounts, network configuration, the kernel command line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

from kiln_builder.checks.services import enablement
from kiln_builder.checks.tree import Tree

SSHD_CONFIG = "/etc/ssh/sshd_config"
MAX_INCLUDES = 16
VM_NICS = ("ens3", "enp1s0", "eth0")  # names a cloud VM's virtio NIC gets


@dataclass(frozen=True)
class Setting:
    value: str
    file: str


def sshd_settings(tree: Tree) -> dict[str, Setting]:
    """sshd_config's global settings, keywords lower-cased. As sshd reads it:
    the first value of a keyword wins, `Include` files are read where they
    stand (globs, relative to /etc/ssh), and a `Match` block ends the global part."""
    found: dict[str, Setting] = {}
    _read_sshd(tree, SSHD_CONFIG, found, depth=0)
    return found


def _read_sshd(tree: Tree, path: str, found: dict[str, Setting], depth: int) -> bool:
    """Reads one file into found; False once a Match block began."""
    for line in tree.lines(path):
        words = re.split(r"[\s=]+", line, maxsplit=1)
        keyword, value = words[0].lower(), (words[1].strip() if len(words) > 1 else "")
        if keyword == "match":
            return False
        if keyword == "include" and depth < MAX_INCLUDES:
            for pattern in value.split():
                if not pattern.startswith("/"):
                    pattern = f"/etc/ssh/{pattern}"
                parent = PurePosixPath(pattern).parent
                for included in tree.glob(str(parent), PurePosixPath(pattern).name):
                    if not _read_sshd(tree, included, found, depth + 1):
                        return False
            continue
        found.setdefault(keyword, Setting(value.strip('"'), path))
    return True


@dataclass(frozen=True)
class Account:
    name: str
    password: str  # the second field as written


def accounts(tree: Tree, path: str) -> list[Account]:
    """The entries of /etc/passwd or /etc/shadow (name and password field)."""
    out = []
    for line in (tree.read_text(path) or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 2 and fields[0] and not line.startswith(("#", "+", "-")):
            out.append(Account(fields[0], fields[1]))
    return out


def usable_password(field: str) -> bool:
    """A shadow password field that lets someone log in: a hash, or empty
    (no password at all). Locked ones start with ! or *."""
    return not field.startswith(("!", "*"))


# ---- network -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetConfig:
    file: str
    dhcp: bool
    system: str  # ifupdown, networkd, netplan, NetworkManager, ifcfg
    active: bool  # the program reading it is installed and enabled


def network_configs(tree: Tree) -> list[NetConfig]:
    """Every network configuration in the image that configures a real NIC
    (not just the loopback), with whether it asks for DHCP."""
    return [*_ifupdown(tree), *_networkd(tree), *_netplan(tree), *_ifcfg(tree), *_nm(tree)]


def _ifupdown(tree: Tree) -> list[NetConfig]:
    files = ["/etc/network/interfaces"]
    files += list(tree.glob("/etc/network/interfaces.d", "*"))
    active = tree.exists("/sbin/ifup") and enablement(tree, "networking.service").enabled
    out = []
    for path in files:
        stanzas = [ln.split() for ln in tree.lines(path) if ln.startswith("iface ")]
        nics = [s for s in stanzas if len(s) >= 4 and s[1] != "lo"]
        if nics:
            dhcp = any(s[3] == "dhcp" for s in nics)
            out.append(NetConfig(path, dhcp, "ifupdown", active))
    return out


def _networkd(tree: Tree) -> list[NetConfig]:
    active = enablement(tree, "systemd-networkd.service").enabled
    out = []
    for directory in ("/etc/systemd/network", "/usr/lib/systemd/network", "/run/systemd/network"):
        for path in tree.glob(directory, "*.network"):
            lines = tree.lines(path)
            if not _networkd_nic(lines):
                continue
            dhcp = any(re.fullmatch(r"DHCP\s*=\s*(yes|true|ipv4|both|1)", ln, re.I) for ln in lines)
            out.append(NetConfig(path, dhcp, "systemd-networkd", active))
    return out


def _networkd_nic(lines: list[str]) -> bool:
    """Whether a .network file matches a VM's Ethernet NIC (ens3, eth0, ...):
    not the loopback, nor the containers', tunnels' and WLANs' examples
    systemd ships."""
    matches: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition("=")
        matches.setdefault(key.strip(), value.strip())
    if "Kind" in matches or matches.get("Type", "ether") != "ether":
        return False
    if matches.get("Virtualization", "") in ("container", "!vm"):
        return False
    names = [n for n in matches.get("Name", "*").split() if not n.startswith("!")]
    return any(fnmatchcase(nic, n) for nic in VM_NICS for n in names)


def _netplan(tree: Tree) -> list[NetConfig]:
    active = tree.exists("/usr/sbin/netplan")
    out = []
    for path in tree.glob("/etc/netplan", "*.yaml"):
        text = tree.read_text(path) or ""
        dhcp = re.search(r"^\s*dhcp4\s*:\s*(true|yes|on)\s*$", text, re.M | re.I) is not None
        out.append(NetConfig(path, dhcp, "netplan", active))
    return out


def _ifcfg(tree: Tree) -> list[NetConfig]:
    out = []
    for path in tree.glob("/etc/sysconfig/network-scripts", "ifcfg-*"):
        if path.endswith("ifcfg-lo"):
            continue
        lines = tree.lines(path)
        dhcp = any(re.fullmatch(r"BOOTPROTO\s*=\s*\"?dhcp\"?", ln, re.I) for ln in lines)
        out.append(NetConfig(path, dhcp, "ifcfg", True))
    return out


def _nm(tree: Tree) -> list[NetConfig]:
    """NetworkManager configures every NIC by DHCP unless told otherwise."""
    found = enablement(tree, "NetworkManager.service")
    if tree.exists("/usr/sbin/NetworkManager") and found.enabled:
        return [NetConfig(found.file, True, "NetworkManager", True)]
    return []


# ---- boot ----------------------------------------------------------------------------------

CMDLINE_FILES = (
    "/boot/grub/grub.cfg",
    "/etc/default/grub",
    "/etc/kernel/cmdline",
    "/boot/extlinux/extlinux.conf",
    "/boot/syslinux/syslinux.cfg",
    "/extlinux.conf",
)


_CMDLINE_RE = re.compile(r"(linux|linux16|linuxefi|append)\s|GRUB_CMDLINE_LINUX\w*=")


def kernel_cmdlines(tree: Tree) -> list[tuple[str, str]]:
    """(file, line) of every kernel command line the boot loaders would use."""
    out = []
    for path in CMDLINE_FILES:
        for line in tree.lines(path):
            if path == "/etc/kernel/cmdline" or re.match(_CMDLINE_RE, line):
                out.append((path, line))
    return out


def kernel_versions(tree: Tree) -> list[str]:
    return [name for name in tree.listdir("/lib/modules") if tree.is_dir(f"/lib/modules/{name}")]
