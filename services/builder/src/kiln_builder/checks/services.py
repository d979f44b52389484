"""Whether a service starts at boot, read from the tree as systemd and
sysvinit would read it, never by running systemctl in the image.

systemd: a unit is enabled when a `*.wants/` or `*.requires/` directory under
/etc/systemd/system (or the vendor directories) links it, or it is an alias
linked there; a link to /dev/null masks it. Without links, presets decide what
`systemctl preset-all` enables at first boot (systemd does so when
/etc/machine-id is empty). sysvinit: an `S??name` link in /etc/rc[2-5].d."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from kiln_builder.checks.tree import Tree

UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
PRESET_DIRS = (
    "/etc/systemd/system-preset",
    "/usr/lib/systemd/system-preset",
    "/lib/systemd/system-preset",
)
RUNLEVELS = ("2", "3", "4", "5")


@dataclass(frozen=True)
class Enablement:
    enabled: bool
    file: str  # the link or file that says so ("" when nothing does)
    how: str  # "wants link", "preset", "sysv rc link", "masked", "not enabled"


def masked(tree: Tree, unit: str) -> bool:
    target = tree.link_target(f"/etc/systemd/system/{unit}")
    return target == "/dev/null"


def _wants_link(tree: Tree, unit: str) -> str:
    for directory in UNIT_DIRS[:1]:  # admin links; vendor .wants are static, see below
        for entry in tree.listdir(directory):
            if not entry.endswith((".wants", ".requires")):
                continue
            link = f"{directory}/{entry}/{unit}"
            if tree.link_target(link) is not None or tree.is_file(link):
                return link
    return ""


def _static_wants(tree: Tree, unit: str) -> str:
    """A vendor `.wants` link (shipped in the package, always on) from a target
    that is reached at boot."""
    for directory in UNIT_DIRS[1:]:
        for target in (
            "multi-user.target",
            "sysinit.target",
            "basic.target",
            "sockets.target",
            "network.target",
            "cloud-init.target",
        ):
            link = f"{directory}/{target}.wants/{unit}"
            if tree.link_target(link) is not None:
                return link
    return ""


def _preset(tree: Tree, unit: str) -> tuple[str, str] | None:
    """The first preset line matching the unit: (verb, file), as systemd
    orders preset files by name across its directories (/etc first)."""
    files: dict[str, str] = {}
    for directory in PRESET_DIRS:
        for name in tree.listdir(directory):
            if name.endswith(".preset"):
                files.setdefault(name, f"{directory}/{name}")
    for name in sorted(files):
        for line in tree.lines(files[name]):
            words = line.split()
            if (
                len(words) >= 2
                and words[0] in ("enable", "disable")
                and fnmatchcase(unit, words[1])
            ):
                return words[0], files[name]
    return None


def _sysv(tree: Tree, name: str) -> str:
    for level in RUNLEVELS:
        for entry in tree.listdir(f"/etc/rc{level}.d"):
            if re.fullmatch(rf"S\d\d{re.escape(name)}", entry):
                return f"/etc/rc{level}.d/{entry}"
    return ""


def first_boot(tree: Tree) -> bool:
    """systemd applies presets on the first boot: an empty or missing machine-id."""
    return not (tree.read_text("/etc/machine-id") or "").strip()


def installed(tree: Tree, unit: str) -> bool:
    """A unit file for it (or its template, for `getty@tty1.service`)."""
    template = re.sub(r"@[^.]*\.", "@.", unit)
    return any(tree.exists(f"{d}/{u}") for d in UNIT_DIRS for u in {unit, template})


def enablement(tree: Tree, unit: str) -> Enablement:
    """How one systemd unit (`ssh.service`) or sysv script is set to start."""
    if masked(tree, unit):
        return Enablement(False, f"/etc/systemd/system/{unit}", "masked")
    sysv = _sysv(tree, unit.removesuffix(".service"))
    if not installed(tree, unit):
        # No native unit: systemd's sysv generator (or sysvinit) runs the rc script.
        return Enablement(bool(sysv), sysv, "sysv rc link" if sysv else "not installed")
    link = _wants_link(tree, unit) or _static_wants(tree, unit)
    if link:
        return Enablement(True, link, "wants link")
    alias = f"/etc/systemd/system/{unit}"
    if tree.link_target(alias) is not None:
        # An alias (sshd.service -> ssh.service) is made by enabling the unit.
        return Enablement(True, alias, "alias link")
    preset = _preset(tree, unit)
    if preset is not None and preset[0] == "enable" and first_boot(tree):
        return Enablement(True, preset[1], "preset (applied at first boot)")
    # An rc script beside a native unit does not count: systemd ignores it.
    return Enablement(False, "", "not enabled")


def any_enabled(tree: Tree, units: Sequence[str]) -> Enablement | None:
    """The first of units that is enabled, or None."""
    for unit in units:
        found = enablement(tree, unit)
        if found.enabled:
            return found
    return None
