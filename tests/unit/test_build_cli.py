"""`kiln build` on the command line: routing RECIPE to submit, and how a
followed build is shown when stderr is not a terminal."""

from __future__ import annotations

import argparse
import io
import json
from types import TracebackType

import pytest

from kiln_cli import build_cmd
from kiln_cli.build_cmd import Follower, route
from kiln_cli.main import main
from kiln_common.builds import (
    Build,
    BuildError,
    BuildState,
    BuildUpdate,
    CheckResult,
    LogLine,
    Progress,
    StepState,
    StepUpdate,
    TestCommandResult,
)


def test_a_recipe_argument_means_submit() -> None:
    assert route(["build", "r.yaml", "--follow"]) == ["build", "submit", "r.yaml", "--follow"]
    assert route(["build", "ls"]) == ["build", "ls"]
    assert route(["build", "logs", "ID", "-f"]) == ["build", "logs", "ID", "-f"]
    assert route(["artifact", "ls"]) == ["artifact", "ls"]


def test_a_followed_build_prints_steps_and_state_without_redrawing() -> None:
    out = io.StringIO()
    follower = Follower(out)
    running = BuildUpdate(state=BuildState.RUNNING, build=Build(worker="w1"))
    follower.show(running)
    follower.show(
        BuildUpdate(step=StepUpdate(name="bootstrap", state=StepState.RUNNING, index=1, total=3))
    )
    follower.show(BuildUpdate(log=LogLine(text="apt says hello")))
    follower.show(BuildUpdate(progress=Progress(step="upload", fraction=0.5)))
    follower.show(
        BuildUpdate(
            step=StepUpdate(
                name="bootstrap",
                state=StepState.DONE,
                cached=True,
                seconds=1.25,
                index=1,
                total=3,
            )
        )
    )
    follower.show(BuildUpdate(state=BuildState.SUCCEEDED))
    assert out.getvalue().splitlines() == [
        "build running on w1",
        "[1/3] bootstrap ...",
        "[1/3] bootstrap done in 1.2s (cached)",
        "build succeeded",
    ]
    assert "\x1b" not in out.getvalue()


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
