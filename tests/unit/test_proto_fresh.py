"""The committed stubs are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from support import REPO


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    subprocess.run(
        [str(REPO / "scripts/gen-proto.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    committed = REPO / "services/common/src/kiln_api"
    fresh = tmp_path / "kiln_api"
    generated = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert generated, "protoc generated nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(fresh / p, committed / p, shallow=False)]
    assert not stale, f"stale generated code, run `make proto`: {stale}"
    extra = sorted(
        str(p.relative_to(committed))
        for p in committed.rglob("*.py*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.relative_to(committed) not in generated
    )
    assert not extra, f"generated files with no .proto behind them: {extra}"
