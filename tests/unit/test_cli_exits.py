"""The kiln command's exit codes (kiln_cli.exits): each kind of error gives
the code docs/cli.md's one table says, and the table lists every code."""

from __future__ import annotations

import re

import pytest
from support import REPO

from kiln_cli import exits
from kiln_client.discovery import NotRunning
from kiln_common import errors


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("x"), 2),
        (errors.NotFound("x"), 4),
        (errors.Unavailable("x"), 5),
        (errors.DeadlineExceeded("x"), 5),
        (NotRunning("no stack"), 5),
        (errors.Unauthenticated("x"), 6),
        (errors.PermissionDenied("x"), 6),
        (errors.Cancelled("x"), 3),
        (errors.FailedPrecondition("x"), 1),
        (errors.DataLoss("x"), 1),
        (errors.AlreadyExists("x"), 1),
    ],
)
def test_each_error_has_its_exit_code(error: errors.KilnError, code: int) -> None:
    assert exits.for_error(error) == code


def test_the_docs_table_lists_every_exit_code() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    listed = {int(n) for n in re.findall(r"^\| (\d+) \|", text, re.MULTILINE)}
    codes = {v for k, v in vars(exits).items() if k.isupper() and isinstance(v, int)}
    assert listed == codes
