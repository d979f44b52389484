"""The builder's VM runner: boots an image in a throw-away libvirt domain and
waits for a login prompt on its serial console.

Three rules shape it:
- KVM only when KVM can really run a guest (accel.probe_accel); otherwise TCG, and
  the result says which and why.
- Every domain is transient, started with AUTODESTROY and destroyed explicitly on
  every path, cancellation included (runner). reap.reap_orphans() covers what is
  left: a domain whose builder died while libvirtd was not watching.
- The image under test is never written: the guest runs on a qcow2 overlay.

Modules: accel (the accelerator probe), domain (what to boot and its domain XML),
runner (running a domain, the builder's boot test), commands (the recipe's test
commands inside the guest), reap (the janitor).
"""

from kiln_builder.libvirtd import quiet_libvirt
from kiln_builder.vm.accel import Accel, default_vcpus, host_accel, probe_accel
from kiln_builder.vm.commands import (
    WANTS_LINK,
    AddFiles,
    CommandFailed,
    CommandResult,
    CommandsRun,
    CommandsTimeout,
    boot_test_commands,
    raise_on_failure,
    write_results,
)
from kiln_builder.vm.domain import (
    DOMAIN_PREFIX,
    DiskBoot,
    DomainSpec,
    KernelBoot,
    Machine,
    Owner,
    disk_format,
    domain_name,
    domain_xml,
    read_owner,
)
from kiln_builder.vm.reap import reap_orphans
from kiln_builder.vm.runner import (
    GROW_TEST_BYTES,
    SCRATCH_PREFIX,
    BootFailed,
    BootResult,
    BootTimeout,
    Vm,
    VmRunner,
    boot_test,
    console_tail,
)

quiet_libvirt()

__all__ = [
    "DOMAIN_PREFIX",
    "GROW_TEST_BYTES",
    "SCRATCH_PREFIX",
    "WANTS_LINK",
    "Accel",
    "AddFiles",
    "BootFailed",
    "BootResult",
    "BootTimeout",
    "CommandFailed",
    "CommandResult",
    "CommandsRun",
    "CommandsTimeout",
    "DiskBoot",
    "DomainSpec",
    "KernelBoot",
    "Machine",
    "Owner",
    "Vm",
    "VmRunner",
    "boot_test",
    "boot_test_commands",
    "console_tail",
    "default_vcpus",
    "disk_format",
    "domain_name",
    "domain_xml",
    "host_accel",
    "probe_accel",
    "raise_on_failure",
    "read_owner",
    "reap_orphans",
    "write_results",
]
