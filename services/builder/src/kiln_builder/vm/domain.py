"""What to boot and the libvirt domain that boots it: the machine (a whole disk, or a
root filesystem with its kernel), the domain's name, its XML, and the owner recorded
in its metadata so that the janitor can tell an orphan.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import libvirt

from kiln_builder.vm.accel import Accel
from kiln_common.proc import process_start

KILN_NS = "https://kiln.dev/xmlns/libvirt/domain/1"
DOMAIN_PREFIX = "kiln-"
MEMORY_MIB = 1024

# --- what to boot ------------------------------------------------------------------


@dataclass(frozen=True)
class DiskBoot:
    """A whole-disk image (qcow2 or raw) booted through the BIOS, as a cloud would.
    grow_by enlarges the guest's disk (the overlay) beyond the image, as a cloud
    flavour with a bigger disk does, so that growing the root is exercised."""

    image: Path
    grow_by: int = 0


@dataclass(frozen=True)
class KernelBoot:
    """A root-filesystem image without partition table or bootloader, booted by
    handing QEMU the kernel directly; the image is the guest's /dev/vda."""

    image: Path
    kernel: Path
    initrd: Path | None
    cmdline: str = "root=/dev/vda rw console=ttyS0"


Machine = DiskBoot | KernelBoot


def disk_format(image: Path) -> Literal["qcow2", "raw"]:
    # Read from the magic rather than trusted from a name: QEMU must never be left
    # to guess a format (a raw image that looks like qcow2 could name a backing file).
    with open(image, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


@dataclass(frozen=True)
class Owner:
    """The builder process that owns a domain, recorded in the domain's metadata.
    started (the process's start time in clock ticks after boot) tells a reused pid."""

    host: str
    pid: int
    started: int | None

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), process_start(os.getpid()))


def domain_name(build_id: str) -> str:
    """kiln-<build id>, with characters libvirt or a shell might trip on replaced. A
    short hash of the raw id is added when anything was replaced, so two build ids
    that sanitise alike still get distinct domains."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", build_id).strip("-.")[:48]
    if clean != build_id or not clean:
        clean = f"{clean}-{hashlib.sha256(build_id.encode()).hexdigest()[:8]}".lstrip("-")
    return f"{DOMAIN_PREFIX}{clean}"


# --- domain XML --------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    build_id: str
    accel: Accel
    disk: Path  # what the guest writes to: the overlay
    machine: Machine
    console_log: Path
    network: Literal["user", "none"]
    owner: Owner
    vcpus: int
    memory_mib: int = MEMORY_MIB
    channel_log: Path | None = None  # the guest's second serial port (ttyS1), if any


def domain_xml(spec: DomainSpec) -> str:
    domain = ET.Element("domain", type=spec.accel.domain_type)
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "uuid").text = spec.uuid
    domain.append(_metadata(spec))
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    domain.append(_os(spec.machine))
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    # A boot test runs once: a guest that reboots, powers off or crashes is finished.
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        ET.SubElement(domain, event).text = "destroy"
    domain.append(_devices(spec))
    return ET.tostring(domain, encoding="unicode")


def _metadata(spec: DomainSpec) -> ET.Element:
    metadata = ET.Element("metadata")
    kiln = ET.SubElement(metadata, "kiln:vm", {"xmlns:kiln": KILN_NS})
    ET.SubElement(kiln, "kiln:build").text = spec.build_id
    ET.SubElement(kiln, "kiln:host").text = spec.owner.host
    ET.SubElement(kiln, "kiln:pid").text = str(spec.owner.pid)
    if spec.owner.started is not None:
        ET.SubElement(kiln, "kiln:pid-start").text = str(spec.owner.started)
    return metadata


def _os(machine: Machine) -> ET.Element:
    os_ = ET.Element("os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    if isinstance(machine, KernelBoot):
        ET.SubElement(os_, "kernel").text = str(machine.kernel.resolve())
        if machine.initrd is not None:
            ET.SubElement(os_, "initrd").text = str(machine.initrd.resolve())
        ET.SubElement(os_, "cmdline").text = machine.cmdline
    else:
        ET.SubElement(os_, "boot", dev="hd")  # SeaBIOS, as the image's bootloader expects
    return os_


def _devices(spec: DomainSpec) -> ET.Element:
    devices = ET.Element("devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    # The overlay is thrown away after the boot: no need to flush it.
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", cache="unsafe")
    ET.SubElement(disk, "source", file=str(spec.disk))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if spec.network == "user":
        nic = ET.SubElement(devices, "interface", type="user")
        ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(spec.console_log), append="off")
    ET.SubElement(serial, "target", port="0")
    if spec.channel_log is not None:
        # A second port for a program in the guest to report to (vm.commands).
        channel = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(channel, "source", path=str(spec.channel_log), append="off")
        ET.SubElement(channel, "target", port="1")
    ET.SubElement(devices, "memballoon", model="none")
    return devices


def read_owner(dom: Any) -> tuple[str, Owner] | None:
    """(build id, owner) from a domain's Kiln metadata, or None if it has none."""
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, KILN_NS, 0)
    except libvirt.libvirtError:
        return None
    # libvirt hands the element back without its namespace: match local names.
    fields = {child.tag.rpartition("}")[2]: child.text or "" for child in ET.fromstring(text)}
    pid, started = fields.get("pid", ""), fields.get("pid-start", "")
    if not pid.isdigit():
        return None
    owner = Owner(fields.get("host", ""), int(pid), int(started) if started.isdigit() else None)
    return fields.get("build", ""), owner
