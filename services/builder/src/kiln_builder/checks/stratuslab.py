"""`stratuslab`: StratusLab's rules for images built from scratch (seed 003,
"Building Images from Scratch"): DHCP without udev persistent-net rules, no
private information left, SSH key login only, a firewall, minimal services."""

from __future__ import annotations

import re

from kiln_builder.checks.config import (
    SSHD_CONFIG,
    accounts,
    network_configs,
    sshd_settings,
    usable_password,
)
from kiln_builder.checks.model import Facts, Rule, Verdict
from kiln_builder.checks.services import any_enabled, enablement
from kiln_builder.checks.tree import Tree

PERSISTENT_NET = (
    ("/etc/udev/rules.d", "*persistent-net*.rules"),
    ("/etc/udev/rules.d", "*net.rules"),  # the seed removes /etc/udev/rules.d/*net.rules
    ("/lib/udev/rules.d", "*net-gen*"),  # ... and the generator that writes them
    ("/usr/lib/udev/rules.d", "*net-gen*"),
)
# Plain-text or legacy remote services nobody should find listening on a cloud image.
UNWANTED = {
    "telnet": ("telnet.socket", "telnetd.service", "inetutils-telnetd.service"),
    "rsh/rlogin/rexec": ("rsh.socket", "rlogin.socket", "rexec.socket", "rsh-server.service"),
    "ftp": ("vsftpd.service", "proftpd.service", "pure-ftpd.service", "ftpd.service"),
    "tftp": ("tftpd-hpa.service", "tftp.socket", "atftpd.service"),
    "inetd": (
        "inetd.service",
        "openbsd-inetd.service",
        "inetutils-inetd.service",
        "xinetd.service",
    ),
    "finger/talk": ("fingerd.socket", "talkd.service"),
    "NIS/rpcbind": ("ypbind.service", "nis.service", "rpcbind.service", "rpcbind.socket"),
}
INETD_SERVICES = re.compile(r"^(telnet|shell|login|exec|ftp|tftp|finger|talk|ntalk)\s")


def dhcp(tree: Tree, facts: Facts) -> Verdict:
    configs = network_configs(tree)
    used = [c for c in configs if c.dhcp and c.active]
    if used:
        return Verdict(True, used[0].file, f"{used[0].system} asks DHCP for an address")
    if any(c.dhcp for c in configs):
        idle = next(c for c in configs if c.dhcp)
        return Verdict(
            False, idle.file, f"asks for DHCP but {idle.system} is not installed or not enabled"
        )
    if configs:
        return Verdict(False, configs[0].file, "network configured statically, not by DHCP")
    return Verdict(False, "/etc/network/interfaces", "no network configuration at all")


def no_persistent_net(tree: Tree, facts: Facts) -> Verdict:
    for directory, pattern in PERSISTENT_NET:
        for path in tree.glob(directory, pattern):
            return Verdict(
                False,
                path,
                "pins NIC names to this build's MAC addresses: remove it "
                "(sysprep: udev-persistent-net)",
            )
    return Verdict(True, "/etc/udev/rules.d", "no persistent-net rules or their generator")


def no_host_keys(tree: Tree, facts: Facts) -> Verdict:
    keys = [p for p in tree.glob("/etc/ssh", "ssh_host_*_key") if tree.is_file(p)]
    if keys:
        return Verdict(
            False,
            keys[0],
            f"{len(keys)} SSH host private key(s) would be shared by "
            "every copy of the image (sysprep: ssh-host-keys)",
        )
    return Verdict(True, "/etc/ssh", "no SSH host private keys")


def no_passwords(tree: Tree, facts: Facts) -> Verdict:
    users = [a.name for a in accounts(tree, "/etc/shadow") if usable_password(a.password)]
    if users:
        return Verdict(
            False,
            "/etc/shadow",
            "a password (or an empty one) lets these accounts "
            f"log in: {', '.join(users[:10])} (sysprep: root-password)",
        )
    exposed = [a.name for a in accounts(tree, "/etc/passwd") if a.password not in ("x", "*", "!")]
    if exposed:
        return Verdict(False, "/etc/passwd", f"password field set for: {', '.join(exposed[:10])}")
    return Verdict(True, "/etc/shadow", "every account's password is locked")


def no_private_keys(tree: Tree, facts: Facts) -> Verdict:
    homes = ["/root", *tree.glob("/home", "*")]
    for home in homes:
        for path in tree.glob(f"{home}/.ssh", "*"):
            head = (tree.read_text(path) or "")[:200] if tree.is_file(path) else ""
            if "PRIVATE KEY-----" in head:
                return Verdict(False, path, "a private key is left in the image")
    return Verdict(True, "/root/.ssh", "no private keys in /root or /home/*")


def ssh_keys_only(tree: Tree, facts: Facts) -> Verdict:
    if not tree.is_file(SSHD_CONFIG):
        return Verdict(False, SSHD_CONFIG, "missing: cannot tell how sshd lets users in")
    settings = sshd_settings(tree)
    # sshd's defaults are yes for both; ChallengeResponse is the old name.
    for keyword in ("passwordauthentication", "kbdinteractiveauthentication"):
        setting = settings.get(keyword)
        if keyword == "kbdinteractiveauthentication" and setting is None:
            setting = settings.get("challengeresponseauthentication")
        if setting is None:
            return Verdict(
                False,
                SSHD_CONFIG,
                f"{_name(keyword)} is not set: "
                f"sshd's default lets passwords in; set {_name(keyword)} no",
            )
        if setting.value.lower() != "no":
            return Verdict(False, setting.file, f"{_name(keyword)} {setting.value}: set it to no")
    return Verdict(
        True,
        settings["passwordauthentication"].file,
        "PasswordAuthentication no, KbdInteractiveAuthentication no",
    )


def _name(keyword: str) -> str:
    return {
        "passwordauthentication": "PasswordAuthentication",
        "kbdinteractiveauthentication": "KbdInteractiveAuthentication",
    }[keyword]


def firewall(tree: Tree, facts: Facts) -> Verdict:
    """nftables, iptables-persistent, ufw or firewalld, configured to drop
    what is not allowed and started at boot."""
    for check in (_nftables, _iptables, _ufw, _firewalld):
        found = check(tree)
        if found is not None:
            return found
    return Verdict(
        False,
        "/etc/nftables.conf",
        "no firewall: nftables, iptables-persistent, "
        "ufw or firewalld with a default-drop input policy",
    )


def _nftables(tree: Tree) -> Verdict | None:
    text = tree.read_text("/etc/nftables.conf")
    if text is None:
        return None
    drops = re.search(r"hook\s+input\b[^;}]*;\s*policy\s+drop", text) is not None
    enabled = enablement(tree, "nftables.service")
    if drops and enabled.enabled:
        return Verdict(
            True,
            "/etc/nftables.conf",
            f"an input chain with policy drop, nftables.service enabled ({enabled.how})",
        )
    if drops:
        return Verdict(
            False,
            "/etc/nftables.conf",
            "drops input, but nftables.service is not enabled: the rules are never loaded",
        )
    return None


def _iptables(tree: Tree) -> Verdict | None:
    lines = tree.lines("/etc/iptables/rules.v4")
    if not lines:
        return None
    drops = any(re.fullmatch(r":INPUT (DROP|REJECT)\b.*", ln) for ln in lines)
    enabled = any_enabled(tree, ("netfilter-persistent.service", "iptables.service"))
    if drops and enabled is not None:
        return Verdict(True, "/etc/iptables/rules.v4", "INPUT policy DROP, loaded at boot")
    return None


def _ufw(tree: Tree) -> Verdict | None:
    conf = tree.lines("/etc/ufw/ufw.conf")
    if not conf:
        return None
    on = any(re.fullmatch(r"ENABLED\s*=\s*yes", ln, re.I) for ln in conf)
    policy = any(
        re.fullmatch(r'DEFAULT_INPUT_POLICY\s*=\s*"?(DROP|REJECT)"?', ln)
        for ln in tree.lines("/etc/default/ufw")
    )
    if on and policy and enablement(tree, "ufw.service").enabled:
        return Verdict(True, "/etc/ufw/ufw.conf", "ufw enabled, default input policy drop")
    return Verdict(
        False,
        "/etc/ufw/ufw.conf",
        "ufw is installed but not enabled with a "
        "dropping input policy (ENABLED=yes, DEFAULT_INPUT_POLICY=DROP)",
    )


def _firewalld(tree: Tree) -> Verdict | None:
    found = enablement(tree, "firewalld.service")
    if found.enabled and tree.exists("/usr/sbin/firewalld"):
        return Verdict(True, found.file, "firewalld enabled (its zones drop by default)")
    return None


def minimal_services(tree: Tree, facts: Facts) -> Verdict:
    for what, units in UNWANTED.items():
        found = any_enabled(tree, units)
        if found is not None:
            return Verdict(
                False, found.file, f"a {what} service starts at boot: disable or remove it"
            )
    for line in tree.lines("/etc/inetd.conf"):
        if INETD_SERVICES.match(line):
            return Verdict(False, "/etc/inetd.conf", f"inetd serves {line.split()[0]}")
    return Verdict(
        True,
        "/etc/systemd/system",
        "no telnet, rsh, ftp, tftp, finger, inetd or NIS service is enabled",
    )


RULES = (
    Rule("stratuslab.dhcp", "Networking is configured by DHCP", dhcp),
    Rule(
        "stratuslab.no-persistent-net",
        "No udev persistent-net rules (NIC names not pinned to the build's MAC addresses)",
        no_persistent_net,
    ),
    Rule("stratuslab.no-host-keys", "No SSH host private keys left in /etc/ssh", no_host_keys),
    Rule(
        "stratuslab.no-passwords",
        "No account has a usable password (root's is locked)",
        no_passwords,
    ),
    Rule(
        "stratuslab.no-private-keys", "No private SSH keys left in /root or /home", no_private_keys
    ),
    Rule(
        "stratuslab.ssh-keys-only",
        "SSH accepts keys only: PasswordAuthentication no and KbdInteractiveAuthentication no",
        ssh_keys_only,
    ),
    Rule(
        "stratuslab.firewall",
        "A firewall drops incoming traffic to unused ports, enabled at boot",
        firewall,
    ),
    Rule(
        "stratuslab.minimal-services",
        "No unneeded network services enabled (telnet, rsh, ftp, tftp, finger, inetd, NIS)",
        minimal_services,
    ),
)
