"""A build is a list of stages the engine plans from the recipe: which stages,
in which order, each from its own module of kiln_builder.stages, and a
from-scratch build's layer keys chained so a change reaches every later layer
and no earlier one."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln_builder.engine import Bake, BakeOptions
from kiln_recipe.loader import parse_recipe

SCRATCH = """\
name: web
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
packages: [curl]
files: [{path: /etc/motd, content: MOTD}]
run: [{inline: "true"}]
checks: [cloud]
isolation: MODE
"""
CUSTOMISED = """\
name: web
version: "1"
from:
  image: {url: "http://images.invalid/base.qcow2", sha256: "%s"}
packages: [curl]
checks: [cloud]
isolation: MODE
""" % ("0" * 64)


def bake(text: str, tmp_path: Path, boot_test: bool = True) -> Bake:
    options = BakeOptions(out_dir=tmp_path / "out", work_root=tmp_path / "work",
                          cache_dir=tmp_path / "cache", build_id="b1",
                          boot_test=boot_test)  # fmt: skip
    return Bake(parse_recipe(text, tmp_path), options)


@pytest.mark.parametrize(
    ("recipe", "mode", "plan"),
    [
        (SCRATCH, "sandbox", "bootstrap packages files run sysprep checks disk outputs boot-test"),
        (SCRATCH, "vm", "bootstrap appliance sysprep checks disk outputs boot-test"),
        (CUSTOMISED, "sandbox", "base packages sysprep checks outputs boot-test"),
        (CUSTOMISED, "vm", "base appliance checks outputs boot-test"),
    ],
    ids=["scratch-sandbox", "scratch-vm", "customised-sandbox", "customised-vm"],
)
def test_each_kind_of_build_plans_its_stages_in_order(
    recipe: str, mode: str, plan: str, tmp_path: Path
) -> None:
    b = bake(recipe.replace("MODE", mode), tmp_path)
    assert b.plan() == plan.split()
    for stage in b.stages():  # the folder layout shows the pipeline
        assert type(stage).__module__.startswith("kiln_builder.stages."), stage
        assert stage.reads, f"{stage.name} declares no part of the recipe"


def test_tree_outputs_without_a_boot_test_make_no_disk(tmp_path: Path) -> None:
    text = SCRATCH.replace("MODE", "sandbox") + "outputs: [tar.zst]\n"
    assert "disk" not in bake(text, tmp_path, boot_test=False).plan()
    assert bake(text, tmp_path, boot_test=False).image.name == "no-disk"
    assert "disk" in bake(text, tmp_path).plan()


def test_a_change_to_one_layer_changes_its_key_and_every_later_one_only(tmp_path: Path) -> None:
    before = bake(SCRATCH.replace("MODE", "sandbox"), tmp_path).layered()
    changed = SCRATCH.replace("MODE", "sandbox").replace("MOTD", "another")
    after = bake(changed, tmp_path).layered()
    assert [s.layer for s in before] == ["bootstrap", "packages", "files", "run", "sysprep"]
    same = [a.key == b.key for a, b in zip(before, after, strict=True)]
    assert same == [True, True, False, False, False]
    assert len({s.key for s in before}) == len(before)


def test_stages_with_nothing_to_do_are_left_out(tmp_path: Path) -> None:
    bare = "name: web\nversion: '1'\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n"
    assert bake(bare, tmp_path, boot_test=False).plan() == [
        "bootstrap",
        "sysprep",
        "disk",
        "outputs",
    ]
