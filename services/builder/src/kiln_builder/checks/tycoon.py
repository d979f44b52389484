"""`tycoon`: the requirements of Tycoon auctioneers for a filesystem image
(seed 004, "Requirements for Images"), read for today's distributions: where
the seed names RHEL files (ifcfg-eth0, /etc/inittab) their modern equivalents
count too."""

from __future__ import annotations

from kiln_builder.checks.config import SSHD_CONFIG, accounts, kernel_cmdlines, network_configs
from kiln_builder.checks.model import Facts, Rule, Verdict
from kiln_builder.checks.services import any_enabled, enablement
from kiln_builder.checks.tree import Tree

SSH_UNITS = ("ssh.service", "sshd.service", "ssh.socket", "sshd.socket")
TYCOON_COMPRESSIONS = ("", "bz2", "gz")  # and zip, which Kiln does not write


def ext3_image(tree: Tree, facts: Facts) -> Verdict:
    wanted = [o for o in facts.outputs if o.partition(".")[0] == "ext3"]
    usable = [o for o in wanted if o.partition(".")[2] in TYCOON_COMPRESSIONS]
    if usable:
        return Verdict(True, "outputs", f"the build writes {', '.join(usable)}")
    if wanted:
        return Verdict(
            False,
            "outputs",
            f"{', '.join(wanted)}: Tycoon reads only bzip2 "
            "or gzip compression; write ext3, ext3.bz2 or ext3.gz",
        )
    listed = ", ".join(facts.outputs) or "nothing"
    return Verdict(
        False,
        "outputs",
        f"no ext3 filesystem image among the outputs ({listed}): add ext3, ext3.bz2 or ext3.gz",
    )


def ssh_enabled(tree: Tree, facts: Facts) -> Verdict:
    if not tree.is_file("/usr/sbin/sshd"):
        return Verdict(
            False,
            "/usr/sbin/sshd",
            "the OpenSSH server is not installed (add openssh-server to packages)",
        )
    if not tree.is_file(SSHD_CONFIG):
        return Verdict(False, SSHD_CONFIG, "missing: sshd's configuration must be here")
    found = any_enabled(tree, SSH_UNITS)
    if found is None:
        masked = [u for u in SSH_UNITS if enablement(tree, u).how == "masked"]
        why = f"{masked[0]} is masked" if masked else "no ssh unit is enabled"
        return Verdict(False, "/etc/systemd/system", f"sshd does not start at boot: {why}")
    return Verdict(True, found.file, f"sshd installed, configured and enabled ({found.how})")


def home(tree: Tree, facts: Facts) -> Verdict:
    if tree.is_dir("/home"):
        return Verdict(True, "/home", "a directory")
    what = "is not a directory" if tree.exists("/home") else "does not exist"
    return Verdict(False, "/home", f"{what}: user accounts are created under /home")


def network_config(tree: Tree, facts: Facts) -> Verdict:
    if not tree.is_file("/etc/hosts"):
        return Verdict(False, "/etc/hosts", "missing")
    configs = network_configs(tree)
    if not configs:
        return Verdict(
            False,
            "/etc/network/interfaces",
            "no configuration for a network "
            "interface (ifupdown, systemd-networkd, netplan, ifcfg or "
            "NetworkManager)",
        )
    first = configs[0]
    return Verdict(
        True, first.file, f"{first.system} configures a network interface; /etc/hosts present"
    )


def console(tree: Tree, facts: Facts) -> Verdict:
    """A login on the console: a getty from /etc/inittab (sysvinit), an
    enabled getty@/serial-getty@ unit, or systemd's getty generator, which
    starts one on the console named by the kernel command line. If PAM asks
    pam_securetty, /etc/securetty must name a terminal, or root cannot log in."""
    getty = _getty(tree)
    if getty is None:
        return Verdict(
            False,
            "/etc/inittab",
            "no getty is configured on a console "
            "(inittab, getty@ or serial-getty@ units, or console= for systemd)",
        )
    securetty = any("pam_securetty" in ln for ln in tree.lines("/etc/pam.d/login"))
    if securetty and not tree.lines("/etc/securetty"):
        return Verdict(
            False,
            "/etc/securetty",
            "pam_securetty is used by /etc/pam.d/login but /etc/securetty lists no terminal",
        )
    return Verdict(True, getty[0], getty[1])


def _getty(tree: Tree) -> tuple[str, str] | None:
    for line in tree.lines("/etc/inittab"):
        if "getty" in line and not line.startswith("#"):
            return "/etc/inittab", f"getty in inittab: {line[:60]}"
    wants = "/etc/systemd/system/getty.target.wants"
    units = [u for u in tree.listdir(wants) if u.startswith(("getty@", "serial-getty@"))]
    systemd = tree.exists("/lib/systemd/systemd") or tree.exists("/usr/lib/systemd/systemd")
    if units and systemd:
        return f"{wants}/{units[0]}", f"{', '.join(units)} enabled"
    consoles = [(f, ln) for f, ln in kernel_cmdlines(tree) if "console=" in ln]
    if (
        consoles
        and systemd
        and tree.exists("/lib/systemd/system-generators/systemd-getty-generator")
    ):
        return consoles[0][0], "systemd's getty generator starts a getty on the kernel's console"
    return None


def shadow_passwords(tree: Tree, facts: Facts) -> Verdict:
    if not tree.is_file("/etc/shadow"):
        return Verdict(False, "/etc/shadow", "missing: passwords must be kept in /etc/shadow")
    exposed = [a.name for a in accounts(tree, "/etc/passwd") if a.password != "x"]
    if exposed:
        return Verdict(
            False,
            "/etc/passwd",
            "password field is not 'x' (not shadowed) for: " + ", ".join(exposed[:10]),
        )
    return Verdict(True, "/etc/shadow", "every /etc/passwd entry points to /etc/shadow")


RULES = (
    Rule(
        "tycoon.ext3-image",
        "The image is delivered as an ext3 filesystem image, optionally bzip2- or gzip-compressed",
        ext3_image,
    ),
    Rule(
        "tycoon.ssh-enabled",
        "OpenSSH server installed and enabled, with /etc/ssh/sshd_config",
        ssh_enabled,
    ),
    Rule("tycoon.home", "/home exists (user accounts are created there)", home),
    Rule(
        "tycoon.network-config",
        "Network interface configuration and /etc/hosts present",
        network_config,
    ),
    Rule(
        "tycoon.console",
        "A login is configured on the console (getty; /etc/securetty when PAM asks for it)",
        console,
    ),
    Rule(
        "tycoon.shadow-passwords",
        "Passwords are stored in /etc/shadow, not /etc/passwd",
        shadow_passwords,
    ),
)
