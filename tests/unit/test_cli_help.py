"""The kiln command helps a new user: every verb's --help ends with an
example, and `kiln completion bash|zsh` prints a completion script that
knows every command (bash checks its syntax)."""

from __future__ import annotations

import argparse
import shutil
import subprocess

import pytest

from kiln_cli.main import build_parser, main


def verbs(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [v for name, p in subs[0].choices.items() for v in verbs(p, (*path, name))]


def test_every_verbs_help_ends_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    found = verbs(build_parser())
    assert len(found) >= 40
    for verb in found:
        with pytest.raises(SystemExit):
            main([*verb, "--help"])
        text = capsys.readouterr().out
        assert "example:\n  kiln " in text, f"kiln {' '.join(verb)} --help has no example"


def test_bash_completion_knows_every_command_and_is_valid_bash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for command in ("artifact", "build", "channel", "schedule", "market", "completion"):
        assert command in script
    bash = shutil.which("bash")
    assert bash is not None
    checked = subprocess.run([bash, "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("#compdef kiln")
