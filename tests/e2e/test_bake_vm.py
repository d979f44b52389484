"""kiln-builder bake in vm isolation: the engine's files and run steps go to the
appliance VM (forced by --vm, as the builder's FORCE_VM setting forces it), the
build log says so, the tree output holds what they did, and nothing is left."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from support import REPO, loops_under, mounts_under, qemus_using

pytestmark = [pytest.mark.e2e, pytest.mark.build]

BUILDER = str(Path(sys.executable).parent / "kiln-builder")
CACHE = REPO / ".cache/kiln"

RECIPE = """\
name: vm-mode
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
files:
  - {path: /etc/kiln-marker, content: "MARKER", mode: "0640", group: adm}
run:
  - script: probe.sh
outputs: [tar]
sysprep: none
"""
# Bash-only syntax: it fails under /bin/sh, so it passes only if #! is honoured.
PROBE = """#!/bin/bash
set -euo pipefail
words=(built in the appliance)
echo "${words[*]}" > /etc/kiln-probe
"""


def test_a_forced_vm_bake_runs_its_steps_in_the_appliance(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex  # a fresh files layer: the steps really run
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("MARKER", marker))
    (tmp_path / "probe.sh").write_text(PROBE)
    done = subprocess.run(
        [BUILDER, "bake", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out"),
         "--cache-dir", str(CACHE), "--work-root", str(tmp_path / "work"),
         "--vm", "--no-boot-test"],
        capture_output=True, text=True, timeout=1200, check=False,
        env={**os.environ, "KILN_LOG_LEVEL": "INFO"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "isolation: vm (forced by the builder's setting)" in done.stderr
    assert "run ran in the appliance under" in done.stderr
    assert "isolation: vm (the appliance under " in done.stderr
    (tar,) = (tmp_path / "out").glob("*.tar*")
    with tarfile.open(tar) as archive:
        marker_file = archive.getmember("./etc/kiln-marker")
        probe = archive.extractfile("./etc/kiln-probe")
        assert probe is not None and probe.read() == b"built in the appliance\n"
        found = archive.extractfile(marker_file)
        assert found is not None and found.read() == marker.encode()
    assert (marker_file.mode, marker_file.gid) == (0o640, 4)  # adm, by the image's group file
    assert not qemus_using(tmp_path) and not loops_under(tmp_path) and not mounts_under(tmp_path)
