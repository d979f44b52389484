"""A command line argparse refuses (an unknown verb, a missing argument, a
bad choice, a value of the wrong type) exits 2 like every bad input: one
readable line on stderr, or with --json anywhere on the line one JSON error
object on stderr, and nothing on stdout either way."""

from __future__ import annotations

import json

import pytest

from kiln_cli.exits import BAD_INPUT
from kiln_cli.main import main

REFUSED = {
    "an unknown verb": (["bogus"], "invalid choice: 'bogus'"),
    "an unknown subverb": (["artifact", "bogus"], "invalid choice: 'bogus'"),
    "a missing argument": (["artifact", "show"], "required: id"),
    "a missing verb": (["schedule"], "required: verb"),
    "a bad choice": (["build", "ls", "--state", "nope"], "invalid choice: 'nope'"),
    "a bad type": (["build", "ls", "-n", "ten"], "invalid int value: 'ten'"),
    "a part size of 0": (["artifact", "push", "disk.img", "--part-size", "0"],
                         "'0': a whole number from 1 up"),
    "a bad duration": (["channel", "policy", "a", "b", "--none", "--for", "3x"], "'3x'"),
    "an unknown option": (["token", "ls", "--bogus"], "unrecognized arguments"),
    "exclusive options": (["channel", "policy", "a", "b", "--none", "--requires", "c"],
                          "not allowed with"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_refused_command_line_is_one_line_and_exit_2(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, said = REFUSED[name]
    assert main(argv) == BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("kiln: ") and err.count("\n") == 1 and said in err


@pytest.mark.parametrize("where", ["after the verb", "before the verb"])
@pytest.mark.parametrize("name", list(REFUSED))
def test_with_json_a_refused_command_line_is_one_json_error_on_stderr(
    name: str, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, said = REFUSED[name]
    line = [*argv, "--json"] if where == "after the verb" else ["--json", *argv]
    assert main(line) == BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    error = json.loads(err)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["exit"] == BAD_INPUT
    assert said in error["message"] and "--help" in error["message"]


def test_the_message_names_the_verb_and_where_its_help_is(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["artifact", "url"])
    err = capsys.readouterr().err
    assert err == (
        "kiln: artifact url: the following arguments are required: id"
        " (see kiln artifact url --help)\n"
    )


def test_help_and_version_still_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["--version"], ["build", "ls", "--help"]):
        with pytest.raises(SystemExit) as ended:
            main(argv)
        assert ended.value.code == 0
    assert "usage: kiln build ls" in capsys.readouterr().out


def test_a_url_that_expires_at_once_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    # (refused before any service is asked: no stack runs here)
    assert main(["artifact", "url", "01K0ZQ7Y3M4N5P6Q7R8S9T0V1W", "--expires", "0s"]) == BAD_INPUT
    assert "--expires 0s: a URL lives at least 1s" in capsys.readouterr().err
