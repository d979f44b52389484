"""A recipe's packages, files and run steps as appliance job steps."""

from __future__ import annotations

from collections.abc import Sequence

from kiln_builder.isolation.appliance.job import Packages, RunScript, Step, WriteFile
from kiln_builder.isolation.appliance.network import host_mirrors
from kiln_recipe.schema import Recipe


def recipe_steps(recipe: Recipe, step: str, packages: Sequence[str] = ()) -> tuple[Step, ...]:
    """The job steps of one engine step (packages: already mapped for the distro)."""
    if step == "packages":
        return (Packages(tuple(packages)),)
    if step == "files":
        return tuple(_file(recipe, n) for n in range(len(recipe.files)))
    if step == "run":
        return tuple(_script(recipe, n) for n in range(len(recipe.run)))
    raise ValueError(f"no appliance step for {step}")


def _file(recipe: Recipe, index: int) -> WriteFile:
    spec = recipe.files[index]
    data = (
        spec.content.encode()
        if spec.content is not None
        else (recipe.base_dir / str(spec.source)).read_bytes()
    )
    return WriteFile(spec.path, data, int(spec.mode, 8), spec.owner, spec.group)


def _script(recipe: Recipe, index: int) -> RunScript:
    step = recipe.run[index]
    if step.script:
        return RunScript((recipe.base_dir / step.script).read_bytes(), step.script)
    return RunScript((step.inline or "").encode(), f"inline script {index + 1}")


def recipe_mirrors(recipe: Recipe, default_mirror: str = "") -> list[str]:
    """The mirrors the appliance may reach: the recipe's own, the builder's
    default, and the build host's apt sources (the image's apt may name any)."""
    boot = recipe.from_.bootstrap
    named = [m for m in (boot.mirror if boot else None, default_mirror) if m]
    return [*named, *(m for m in host_mirrors() if m not in named)]
