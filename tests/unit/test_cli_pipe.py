"""`kiln … | head`: a reader that goes away ends the command quietly (no
"Broken pipe" line, no traceback), as Unix tools end, with the status a
shell reports for one that SIGPIPE ended."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kiln_cli.exits import BROKEN_PIPE

RECIPE = Path(__file__).parents[1] / "data" / "recipes" / "minimal.yaml"
# The CLI as it runs, its output flushed at each line (as a long output is
# written out while the command runs, not only at its end).
RUN = "import sys; from kiln_cli.main import main; sys.stdout.reconfigure(line_buffering=True); "


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUN + f"sys.exit(main(['recipe', 'check', {str(RECIPE)!r}]))"],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode == BROKEN_PIPE
