"""The wire layer converts a build field by field: the domain models must keep
step with the API's messages (a field added to one and not the other would be
dropped silently), and a record survives the round trip."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_client import wire
from kiln_common import builds

PAIRS = [
    (builds.Build, pb.Build), (builds.Step, pb.Step), (builds.BuildArtifact, pb.BuildArtifact),
    (builds.BuildError, pb.BuildError), (builds.CheckResult, pb.CheckResult),
    (builds.TestCommandResult, pb.TestCommandResult), (builds.BaseImage, pb.BaseImage),
    (builds.BuildUpdate, pb.BuildUpdate), (builds.StepUpdate, pb.StepUpdate),
    (builds.Progress, pb.Progress), (builds.LogLine, pb.LogLine),
]  # fmt: skip


@pytest.mark.parametrize(("model", "message"), PAIRS, ids=[m.__name__ for m, _ in PAIRS])
def test_each_model_has_exactly_its_messages_fields(model: type, message: type) -> None:
    names = {f.name for f in dataclasses.fields(model)}
    assert names == set(message.DESCRIPTOR.fields_by_name)  # type: ignore[attr-defined]


def test_the_states_are_the_apis_names_and_numbers() -> None:
    assert {f"BUILD_STATE_{s.name}": int(s) for s in builds.BuildState} == dict(
        pb.BuildState.items()
    )
    assert {f"STEP_STATE_{s.name}": int(s) for s in builds.StepState} == dict(pb.StepState.items())


def test_a_full_record_and_each_kind_of_update_survive_the_round_trip() -> None:
    at = datetime(2026, 12, 6, 12, 30, 15, 123456, tzinfo=UTC)
    build = builds.Build(
        id="01j0000000000000000000000a", state=builds.BuildState.FAILED, name="web",
        steps=[builds.Step("run", builds.StepState.FAILED, False, 2.5, at, at, "k")],
        artifacts=[builds.BuildArtifact("a1", "web.qcow2", "image", "qcow2", 10, "s", "t", "u")],
        error=builds.BuildError("run", "exit 1", ["a", "b"]), created=at, attempt=2,
        checks=[builds.CheckResult("tycoon", "tycoon.home", "x", False, True, "/home", "why")],
        test_commands=[builds.TestCommandResult("true", 0, 0.1, "ok\n", 3, False, True)],
        base=builds.BaseImage("artifact:a0", "sha", "qcow2"), isolation="vm",
    )  # fmt: skip
    assert wire.build_from_bytes(wire.build_bytes(build)) == build
    assert wire.build_of(wire.build_message(builds.Build())) == builds.Build()  # None stays None
    updates = [
        builds.BuildUpdate(seq=1, build_id="b", time=at, state=builds.BuildState.QUEUED,
                           build=build),
        builds.BuildUpdate(build_id="b", step=builds.StepUpdate("run", builds.StepState.DONE)),
        builds.BuildUpdate(build_id="b", progress=builds.Progress("upload", 0.5, "1/2")),
        builds.BuildUpdate(build_id="b", log=builds.LogLine("hello", "INFO")),
    ]  # fmt: skip
    for update in updates:
        again = wire.update_of(wire.update_message(update))
        assert again == update and again.kind == update.kind


def test_a_recipe_source_either_way_and_a_validation_survive_the_round_trip() -> None:
    from kiln_recipe.source import RecipeProblem, RecipeSource, Validation

    text = RecipeSource(yaml="name: x\n", files={"a/b.sh": b"\x00\xff"}, filename="r.yaml")
    structured = RecipeSource(structured={"name": "x", "disk": {"size": 2.0}, "l": [1.0, "a"]})
    for source in (text, structured):
        assert wire.recipe_from_bytes(wire.recipe_bytes(source)) == source
    assert wire.recipe_of(pb.RecipeSource()) == RecipeSource()  # neither: a recipe error later
    found = Validation(False, [RecipeProblem("disk.size", 6, "too big")])
    assert wire.validation_of(wire.validation_message(found)) == found
