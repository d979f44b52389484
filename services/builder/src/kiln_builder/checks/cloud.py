"""`cloud`: what an image needs to boot and be usable on an OpenStack-like
cloud (seeds 000 and 001): virtio disk and network drivers where the kernel
finds them at boot, contextualisation (cloud-init or an equivalent), a root
that grows to the disk it is given, and a console the cloud can log."""

from __future__ import annotations

import re

from kiln_builder.checks.config import kernel_cmdlines, kernel_versions
from kiln_builder.checks.model import Facts, Rule, Verdict
from kiln_builder.checks.services import any_enabled, enablement
from kiln_builder.checks.tree import Tree

VIRTIO = ("virtio_blk", "virtio_net")
DISK_FORMATS = ("qcow2", "qcow2c", "raw", "vmdk")
# Contextualisation agents: (what, the program, the units that run it).
CONTEXT_AGENTS = (
    (
        "cloud-init",
        "/usr/bin/cloud-init",
        ("cloud-init.service", "cloud-init-local.service", "cloud-init-main.service"),
    ),
    (
        "OpenNebula one-context",
        "/usr/sbin/one-contextd",
        ("one-context.service", "one-context-local.service"),
    ),
)
GROWPART = ("/usr/bin/growpart", "/usr/sbin/growpart")


def bootable_disk(tree: Tree, facts: Facts) -> Verdict:
    disks = [o for o in facts.outputs if o.partition(".")[0] in DISK_FORMATS]
    if disks and facts.partitioned:
        return Verdict(True, "outputs", f"a partitioned disk: {', '.join(disks)}")
    if disks:
        return Verdict(
            False,
            "outputs",
            f"{', '.join(disks)} would hold a bare filesystem "
            "(the base has no partition table or boot loader): nothing to boot",
        )
    return Verdict(
        False,
        "outputs",
        "no partitioned disk image among the outputs "
        f"({', '.join(facts.outputs) or 'none'}): add qcow2 or raw",
    )


def virtio(tree: Tree, facts: Facts) -> Verdict:
    """For each kernel: virtio_blk and virtio_net built in, or modules the
    initramfs takes in (initramfs-tools' MODULES=most, or listed in
    /etc/initramfs-tools/modules; dracut without hostonly)."""
    versions = kernel_versions(tree)
    if not versions:
        return Verdict(False, "/lib/modules", "no kernel modules: the image has no kernel")
    for version in versions:
        problem = _virtio_in(tree, version)
        if problem is not None:
            return problem
    return Verdict(
        True,
        f"/lib/modules/{versions[-1]}",
        "virtio_blk and virtio_net are built in or taken into the initramfs",
    )


def _virtio_in(tree: Tree, version: str) -> Verdict | None:
    base = f"/lib/modules/{version}"
    builtin = tree.read_text(f"{base}/modules.builtin") or ""
    index = tree.read_text(f"{base}/modules.dep") or ""
    for module in VIRTIO:
        pattern = rf"/{module}\.ko(\.\w+)?\b"
        if re.search(pattern, builtin):
            continue
        if not re.search(pattern, index):
            return Verdict(False, f"{base}/modules.dep", f"kernel {version} has no {module}")
        if not _initramfs_takes(tree, module):
            return Verdict(
                False,
                "/etc/initramfs-tools/initramfs.conf",
                f"{module} is a module "
                "the initramfs leaves out (MODULES=dep?): use MODULES=most or "
                "list it in /etc/initramfs-tools/modules",
            )
    initrds = [n for n in tree.listdir("/boot") if n.startswith(("initrd.img-", "initramfs-"))]
    if not any(version in n for n in initrds):
        return Verdict(
            False,
            "/boot",
            f"no initramfs for kernel {version}: its virtio "
            "modules cannot be loaded before the root is mounted",
        )
    return None


def _initramfs_takes(tree: Tree, module: str) -> bool:
    if tree.is_dir("/etc/initramfs-tools"):
        modules = [ln.split()[0] for ln in tree.lines("/etc/initramfs-tools/modules")]
        if module in modules:
            return True
        conf = [
            "/etc/initramfs-tools/initramfs.conf",
            *tree.glob("/etc/initramfs-tools/conf.d", "*"),
        ]
        setting = "most"  # initramfs-tools' default
        for path in conf:
            for line in tree.lines(path):
                found = re.fullmatch(r"MODULES\s*=\s*(\w+)", line)
                if found:
                    setting = found.group(1)
        return setting in ("most", "netboot") or (setting == "list" and module in modules)
    if tree.is_dir("/etc/dracut.conf.d") or tree.is_file("/etc/dracut.conf"):
        files = ["/etc/dracut.conf", *tree.glob("/etc/dracut.conf.d", "*.conf")]
        text = "\n".join(ln for f in files for ln in tree.lines(f))
        hostonly = re.search(r'hostonly\s*=\s*"?yes', text) is not None
        return not hostonly or module in text
    return False


def contextualisation(tree: Tree, facts: Facts) -> Verdict:
    for what, program, units in CONTEXT_AGENTS:
        if not tree.is_file(program):
            continue
        if what == "cloud-init" and tree.exists("/etc/cloud/cloud-init.disabled"):
            return Verdict(False, "/etc/cloud/cloud-init.disabled", "cloud-init is disabled")
        found = any_enabled(tree, units)
        if found is None:
            return Verdict(
                False, program, f"{what} is installed but none of {', '.join(units)} is enabled"
            )
        return Verdict(True, found.file, f"{what} installed and enabled ({found.how})")
    return Verdict(
        False,
        "/usr/bin/cloud-init",
        "no contextualisation agent: install cloud-init (or OpenNebula's one-context)",
    )


def growable_root(tree: Tree, facts: Facts) -> Verdict:
    """Something grows the root partition and filesystem at boot: cloud-init's
    growpart and resizefs modules, Kiln's kiln-growroot unit (both need
    growpart, from cloud-guest-utils), or systemd-repart with growfs."""
    growpart = next((p for p in GROWPART if tree.is_file(p)), "")
    growers = []
    kiln = enablement(tree, "kiln-growroot.service")
    if kiln.enabled:
        growers.append(("kiln-growroot", kiln.file))
    if tree.is_file("/usr/bin/cloud-init") and _cloud_init_grows(tree):
        growers.append(("cloud-init growpart", "/etc/cloud/cloud.cfg"))
    if growers and growpart:
        return Verdict(True, growers[0][1], f"{growers[0][0]} runs {growpart} at boot")
    if growers:
        return Verdict(
            False,
            "/usr/bin/growpart",
            f"{growers[0][0]} needs growpart, which is "
            "not installed (add cloud-guest-utils to packages)",
        )
    repart = _repart(tree)
    if repart is not None:
        return repart
    return Verdict(
        False,
        "/etc/cloud/cloud.cfg",
        "nothing grows the root at boot (cloud-init "
        "with growpart, kiln-growroot, or systemd-repart with growfs)",
    )


def _cloud_init_grows(tree: Tree) -> bool:
    text = tree.read_text("/etc/cloud/cloud.cfg") or ""
    return re.search(r"^\s*-\s*growpart\b", text, re.M) is not None


def _repart(tree: Tree) -> Verdict | None:
    configs = [*tree.glob("/etc/repart.d", "*.conf"), *tree.glob("/usr/lib/repart.d", "*.conf")]
    growing = [
        c
        for c in configs
        if any(ln.replace(" ", "") == "GrowFileSystem=yes" for ln in tree.lines(c))
    ]
    fstab_growfs = any("x-systemd.growfs" in ln for ln in tree.lines("/etc/fstab"))
    if configs and (growing or fstab_growfs):
        return Verdict(
            True, configs[0], "systemd-repart grows the root partition and growfs its filesystem"
        )
    return None


def serial_console(tree: Tree, facts: Facts) -> Verdict:
    lines = kernel_cmdlines(tree)
    if not lines:
        return Verdict(
            False, "/boot/grub/grub.cfg", "no boot loader configuration with a kernel command line"
        )
    for path, line in lines:
        found = re.search(r"\bconsole=(ttyS\d+|hvc\d+|ttyAMA\d+)\S*", line)
        if found:
            return Verdict(True, path, f"{found.group(0)} on the kernel command line")
    return Verdict(
        False,
        lines[0][0],
        "no console=ttyS0 on the kernel command line: the cloud's console log stays empty",
    )


RULES = (
    Rule(
        "cloud.bootable-disk",
        "A partitioned disk image (qcow2, raw or vmdk) is built",
        bootable_disk,
    ),
    Rule(
        "cloud.virtio",
        "Virtio disk and network drivers available at boot (built into the "
        "kernel or in the initramfs)",
        virtio,
    ),
    Rule(
        "cloud.contextualisation",
        "cloud-init (or an equivalent) installed and enabled",
        contextualisation,
    ),
    Rule(
        "cloud.growable-root",
        "The root partition and filesystem grow to the disk at boot "
        "(growpart/cloud-guest-utils or systemd-repart)",
        growable_root,
    ),
    Rule(
        "cloud.serial-console",
        "A serial console (console=ttyS0) on the kernel command line",
        serial_console,
    ),
)
