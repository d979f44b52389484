"""vm isolation mode: recipe steps (packages, files, run) run inside a throwaway
appliance VM that has the image attached as a disk, the way libguestfs's
appliance works, so the build host never executes user code.

Modules: image (the appliance, built by Kiln's own layers from recipe.yaml),
job (the steps and their encoding on the job disk), protocol (the appliance's
report lines), network (the guest's only way out: the package mirrors), runner
(one QEMU process per job), api (what the engine calls). The appliance's PID 1
is init.sh. See docs/isolation.md.
"""

from kiln_builder.isolation.appliance.api import (
    customise_in_vm,
    customise_tree_in_vm,
    extract_export,
)
from kiln_builder.isolation.appliance.from_recipe import recipe_mirrors, recipe_steps
from kiln_builder.isolation.appliance.image import Appliance, appliance_key, ensure_appliance
from kiln_builder.isolation.appliance.job import (
    WHOLE,
    Job,
    Packages,
    RunScript,
    Step,
    Sysprep,
    WriteFile,
    encode,
)
from kiln_builder.isolation.appliance.protocol import Report, StepReport
from kiln_builder.isolation.appliance.runner import ApplianceResult, JobFailed

__all__ = [
    "WHOLE",
    "Appliance",
    "ApplianceResult",
    "Job",
    "JobFailed",
    "Packages",
    "Report",
    "RunScript",
    "Step",
    "StepReport",
    "Sysprep",
    "WriteFile",
    "appliance_key",
    "customise_in_vm",
    "customise_tree_in_vm",
    "encode",
    "ensure_appliance",
    "extract_export",
    "recipe_mirrors",
    "recipe_steps",
]
