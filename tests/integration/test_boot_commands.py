"""A recipe's test.commands, for real: a bookworm image from the cached bootstrap
layer boots under libvirt/QEMU, and its two commands run inside the guest through
the unit added to a throwaway copy. One passes and its output is recorded, the
last fails the build naming itself; the artifact is untouched and no domain, loop
device or mount is left."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
from pathlib import Path

import pytest
from support import REPO, bookworm_bootstrap_layer, cache_with, kiln_domains, mounts_under

from kiln_builder.engine import Bake, BakeOptions, StepRecord
from kiln_builder.vm import CommandFailed
from kiln_common.digests import file_sha256

pytestmark = [pytest.mark.integration, pytest.mark.build]

RECIPE = """\
name: cmds
version: "1"
from:
  bootstrap: {distro: debian, release: bookworm}
files:
  - {path: /etc/kiln-guest-marker, content: "MARKER\\n"}
disk: {size: 2GiB}
outputs: [qcow2]
test:
  boot: {timeout: 300s}
  command_timeout: 60s
  commands:
    - cat /etc/kiln-guest-marker
    - echo going to fail >&2; exit 3
"""


def throwaway_loops() -> list[str]:
    """Loop devices on a throwaway copy (its name is vm.commands' own)."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip().endswith("/throwaway.raw"):
            found.append(backing.parent.parent.name)
    return found


def throwaway_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if "/kiln-vm-" in p]


def test_commands_run_in_the_guest_and_a_failing_one_fails_the_build(tmp_path: Path) -> None:
    from kiln_recipe import load_recipe

    # A token only this image holds: the first command's output is the guest's,
    # never the build host's (both are bookworm).
    marker = f"guest-{secrets.token_hex(8)}"
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("MARKER", marker))
    cache = cache_with(bookworm_bootstrap_layer(), tmp_path / "cache")
    if (REPO / ".cache/kiln/accel.json").is_file():  # the accelerator verdict: no new probe
        shutil.copy(REPO / ".cache/kiln/accel.json", cache / "accel.json")
    out = tmp_path / "out"
    options = BakeOptions(
        out_dir=out, work_root=tmp_path / "work", cache_dir=cache, build_id="bootcmds",
        keep_workspace=True,  # to compare the disk the boot test started from
    )  # fmt: skip
    before: dict[str, str] = {}

    def progress(step: StepRecord, what: str) -> None:
        if step.name == "boot-test" and what == "start":  # the image is final here
            before.update({p.name: file_sha256(p) for p in _images(tmp_path)})

    bake = Bake(load_recipe(tmp_path / "recipe.yaml"), options, progress)
    with pytest.raises(CommandFailed) as failed:
        asyncio.run(bake.run())

    message = str(failed.value)
    print(message)
    assert "step boot-test failed" in message
    assert "1 of 2 boot test commands failed" in message
    assert "`echo going to fail >&2; exit 3` exited with status 3" in message
    assert "going to fail" in message
    assert "kiln-guest-marker" not in message  # the passing command is not blamed

    first, second = bake.test_commands
    assert first.command == "cat /etc/kiln-guest-marker" and first.passed
    assert first.output == f"{marker}\n"
    assert second.exit_status == 3 and not second.passed and not second.timed_out
    assert second.output == "going to fail\n"
    written = json.loads((out / "cmds-1.tests.json").read_text())["commands"]
    assert [c["exit_status"] for c in written] == [0, 3]
    assert written[0]["output"] == first.output

    # The artifact and the disk it was made from are as they were before the boot.
    assert set(before) == {"cmds-1.qcow2", "disk.raw"}
    assert {p.name: file_sha256(p) for p in _images(tmp_path)} == before
    console = (out / "cmds-1.console.log").read_text(errors="replace")
    assert "kiln-test: command 2 exited 3" in console  # the unit logs to the console too

    assert not [d for d in kiln_domains() if "bootcmds" in d]
    assert not throwaway_loops()
    assert not throwaway_mounts()
    assert not mounts_under(tmp_path)


def _images(tmp_path: Path) -> list[Path]:
    return [*tmp_path.glob("out/*.qcow2"), *tmp_path.glob("work/*/disk.raw")]
