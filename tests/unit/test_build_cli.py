"""`kiln build` on the command line: routing RECIPE to submit, and what
show prints (how a followed build is shown: test_cli_progress)."""

from __future__ import annotations

import argparse
import json
from types import TracebackType

import pytest

from kiln_cli import build_cmd
from kiln_cli.build_cmd import route
from kiln_cli.main import main
from kiln_common.builds import (
    Build,
    BuildError,
    BuildState,
    CheckResult,
    TestCommandResult,
)


def test_a_recipe_argument_means_submit() -> None:
    assert route(["build", "r.yaml", "--follow"]) == ["build", "submit", "r.yaml", "--follow"]
    assert route(["build", "ls"]) == ["build", "ls"]
    assert route(["build", "logs", "ID", "-f"]) == ["build", "logs", "ID", "-f"]
    assert route(["artifact", "ls"]) == ["artifact", "ls"]


class OneBuild:
    """Stands in for the builder client: answers get() with one record."""

    def __init__(self, build: Build) -> None:
        self.build = build

    def __enter__(self) -> OneBuild:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        pass

    def get(self, build_id: str) -> Build:
        return self.build


FAILED_CHECKS = Build(
    id="b1",
    state=BuildState.FAILED,
    name="web",
    version="1",
    checks=[
        CheckResult(
            profile="tycoon", rule="tycoon.home", passed=True, file="/home", why="a directory"
        ),
        CheckResult(
            profile="tycoon",
            rule="tycoon.network-config",
            passed=False,
            file="/etc/hosts",
            why="missing",
        ),
        CheckResult(
            profile="cloud",
            rule="cloud.contextualisation",
            passed=False,
            advisory=True,
            file="/usr/bin/cloud-init",
            why="no agent",
        ),
    ],
    error=BuildError(step="checks", message="step checks failed: 1 requirement check failed"),
)


def test_show_prints_each_check_and_json_has_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(build_cmd, "_client", lambda: OneBuild(FAILED_CHECKS))
    assert main(["build", "show", "b1"]) == 1
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("check ")]
    assert lines == [
        ["check", "PASS", "tycoon.home", "/home:", "a", "directory"],
        ["check", "FAIL", "tycoon.network-config", "/etc/hosts:", "missing"],
        ["check", "WARN", "cloud.contextualisation", "/usr/bin/cloud-init:", "no", "agent"],
    ]
    assert main(["build", "show", "b1", "--json"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["checks"][1] == {"profile": "tycoon", "rule": "tycoon.network-config",
                                   "file": "/etc/hosts", "why": "missing"}  # fmt: skip
    assert record["error"]["step"] == "checks"


def test_show_lists_each_boot_test_command_and_json_has_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build = Build(id="b1", state=BuildState.FAILED, name="w", version="1")
    build.test_commands.extend([
        TestCommandResult(command="cat /etc/os-release", seconds=0.2, passed=True),
        TestCommandResult(command="exit 3", exit_status=3, seconds=0.1),
        TestCommandResult(command="sleep 999", exit_status=124, seconds=60, timed_out=True),
    ])  # fmt: skip
    monkeypatch.setattr(build_cmd, "_client", lambda: OneBuild(build))

    assert build_cmd.cmd_show(argparse.Namespace(id="b1", json=False)) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("test")]
    assert lines == [
        "test        passed        0.2s  cat /etc/os-release",
        "test        exit 3        0.1s  exit 3",
        "test        timed-out    60.0s  sleep 999",
    ]

    build_cmd.cmd_show(argparse.Namespace(id="b1", json=True))
    shown = json.loads(capsys.readouterr().out)
    assert [t["command"] for t in shown["test_commands"]] == ["cat /etc/os-release", "exit 3",
                                                               "sleep 999"]  # fmt: skip


def test_kiln_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"kiln {importlib.metadata.version('kiln-cli')}\n"
