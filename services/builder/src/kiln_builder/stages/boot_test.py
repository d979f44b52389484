"""The boot-test stage: the image boots under libvirt/QEMU, and the recipe's
test commands run in the guest."""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from kiln_builder.stages import in_appliance
from kiln_builder.stages.model import Stage, StepRecord

if TYPE_CHECKING:
    from kiln_builder.engine import Bake


class BootTest(Stage):
    """Runs once the image is made and every resource that made it released."""

    name = "boot-test"
    reads = ("test",)

    async def run(self, bake: Bake, record: StepRecord, held: AsyncExitStack) -> None:
        from kiln_builder import vm

        assert bake.recipe.test.boot is not None and bake.result is not None
        result, image = bake.result, bake.image
        console = bake.opts.out_dir / f"{bake.stem}.console.log"
        common: dict[str, Any] = dict(
            name=bake.opts.build_id,
            console_log=console,
            timeout=bake.recipe.test.boot.timeout,
            kernel_dir=bake.work / "kernel",  # copied out of the image (copy_kernels)
            cache_dir=bake.opts.cache_dir,
            fix_kvm_device=bake.opts.fix_kvm_device,
        )
        result.console_log = console
        if not bake.recipe.test.commands:
            result.boot = await vm.boot_test(image, **common)
            return
        test = bake.recipe.test
        # In vm mode the appliance writes the test runner into the throwaway
        # copy: the host mounts nothing a recipe's code wrote.
        vm_mode = bake.isolation == "vm"
        add = functools.partial(in_appliance.add_test_files_in_vm, bake) if vm_mode else None
        run = await vm.boot_test_commands(
            image,
            test.commands,
            command_timeout=test.command_timeout,
            add_files=add,
            **common,
        )
        result.boot = run.boot
        bake.test_commands[:] = run.results
        tests = bake.opts.out_dir / f"{bake.stem}.tests.json"
        result.tests = vm.write_results(tests, run.results)
        vm.raise_on_failure(run.results)
