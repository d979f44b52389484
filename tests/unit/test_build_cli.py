"""`kiln build` on the command line: routing RECIPE to submit, and how a
followed build is shown when stderr is not a terminal."""

from __future__ import annotations

import io

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_cli.build_cmd import Follower, route


def test_a_recipe_argument_means_submit() -> None:
    assert route(["build", "r.yaml", "--follow"]) == ["build", "submit", "r.yaml", "--follow"]
    assert route(["build", "ls"]) == ["build", "ls"]
    assert route(["build", "logs", "ID", "-f"]) == ["build", "logs", "ID", "-f"]
    assert route(["artifact", "ls"]) == ["artifact", "ls"]


def test_a_followed_build_prints_steps_and_state_without_redrawing() -> None:
    out = io.StringIO()
    follower = Follower(out)
    running = pb.BuildUpdate(state=pb.BUILD_STATE_RUNNING, build=pb.Build(worker="w1"))
    follower.show(running)
    follower.show(
        pb.BuildUpdate(
            step=pb.StepUpdate(name="bootstrap", state=pb.STEP_STATE_RUNNING, index=1, total=3)
        )
    )
    follower.show(pb.BuildUpdate(log=pb.LogLine(text="apt says hello")))
    follower.show(pb.BuildUpdate(progress=pb.Progress(step="upload", fraction=0.5)))
    follower.show(
        pb.BuildUpdate(
            step=pb.StepUpdate(
                name="bootstrap",
                state=pb.STEP_STATE_DONE,
                cached=True,
                seconds=1.25,
                index=1,
                total=3,
            )
        )
    )
    follower.show(pb.BuildUpdate(state=pb.BUILD_STATE_SUCCEEDED))
    assert out.getvalue().splitlines() == [
        "build running on w1",
        "[1/3] bootstrap ...",
        "[1/3] bootstrap done in 1.2s (cached)",
        "build succeeded",
    ]
    assert "\x1b" not in out.getvalue()
