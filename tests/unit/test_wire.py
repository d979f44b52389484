"""The wire layer converts a build field by field: the domain models must keep
step with the API's messages (a field added to one and not the other would be
dropped silently), and a record survives the round trip."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.publisher.v1 import publisher_pb2 as ppb
from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_client import wire
from kiln_common import artifacts, builds, publications
from kiln_common.publications import PublicationState
from kiln_publisher.model import record_bytes, record_of
from kiln_recipe import source

PAIRS = [
    (builds.Build, pb.Build), (builds.Step, pb.Step), (builds.BuildArtifact, pb.BuildArtifact),
    (builds.BuildError, pb.BuildError), (builds.CheckResult, pb.CheckResult),
    (builds.TestCommandResult, pb.TestCommandResult), (builds.BaseImage, pb.BaseImage),
    (builds.BuildUpdate, pb.BuildUpdate), (builds.StepUpdate, pb.StepUpdate),
    (builds.Progress, pb.Progress), (builds.LogLine, pb.LogLine),
    (artifacts.Artifact, spb.Artifact), (artifacts.Checksums, spb.Checksums),
    (source.RecipeSource, pb.RecipeSource), (source.RecipeProblem, pb.RecipeProblem),
    (source.Validation, pb.ValidateRecipeResponse),
    (publications.Publication, ppb.Publication), (publications.TargetResult, ppb.TargetResult),
    (publications.PublishRequest, ppb.PublishRequest),
    (publications.GlanceTarget, ppb.GlanceTarget),
    (publications.MarketplaceTarget, ppb.MarketplaceTarget), (publications.Entry, ppb.Entry),
    (publications.BaseHeader, ppb.FetchBaseHeader),
]  # fmt: skip
# Message fields a model derives (a property), rather than holding.
DERIVED = {publications.Publication: {"state"}}


@pytest.mark.parametrize(("model", "message"), PAIRS, ids=[m.__name__ for m, _ in PAIRS])
def test_each_model_has_exactly_its_messages_fields(model: type, message: type) -> None:
    names = {f.name for f in dataclasses.fields(model)} | DERIVED.get(model, set())
    assert names == set(message.DESCRIPTOR.fields_by_name)  # type: ignore[attr-defined]


def test_the_states_are_the_apis_names_and_numbers() -> None:
    assert {f"BUILD_STATE_{s.name}": int(s) for s in builds.BuildState} == dict(
        pb.BuildState.items()
    )
    assert {f"STEP_STATE_{s.name}": int(s) for s in builds.StepState} == dict(pb.StepState.items())
    assert {f"STATE_{s.name}": int(s) for s in PublicationState} == dict(ppb.State.items())


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
    for sent in (text, structured):
        assert wire.recipe_from_bytes(wire.recipe_bytes(sent)) == sent
    assert wire.recipe_of(pb.RecipeSource()) == RecipeSource()  # neither: a recipe error later
    found = Validation(False, [RecipeProblem("disk.size", 6, "too big")])
    assert wire.validation_of(wire.validation_message(found)) == found


def test_a_record_from_a_newer_builder_is_read_and_rewritten_without_loss() -> None:
    """An API enum is open and messages grow: a pod of this version reads a
    state number it does not know and keeps fields it does not know when it
    rewrites the record (a rolling upgrade mixes the two)."""
    newer = pb.Build(id="b", name="web", state=7).SerializeToString()
    newer += bytes([0x98, 0x06, 0x05])  # field 99, varint 5: a field added later
    build = wire.build_from_bytes(newer)
    assert int(build.state) == 7 and build.state.name == "UNKNOWN_7"
    assert wire.build_summary(newer) == (7, "web", "")
    build.worker = "w1"
    rewritten = wire.build_bytes(build, over=newer)
    assert bytes([0x98, 0x06, 0x05]) in rewritten
    again = pb.Build.FromString(rewritten)
    assert (again.state, again.worker, again.name) == (7, "w1", "web")


def test_an_empty_structured_recipe_is_still_a_structured_one() -> None:
    empty = source.RecipeSource(structured={})
    assert wire.recipe_message(empty).WhichOneof("recipe") == "structured"
    assert wire.recipe_of(wire.recipe_message(empty)) == empty


def test_a_publication_crosses_the_wire_with_its_state_derived_from_its_results() -> None:
    at = datetime(2026, 12, 6, 12, 30, 15, 123456, tzinfo=UTC)
    done = publications.TargetResult(
        "a1", "glance", "c", state=PublicationState.DONE, image_id="i", retired=("old",)
    )
    failed = publications.TargetResult("a1", "marketplace", "e", state=PublicationState.FAILED)
    pub = publications.Publication("p1", "a1", "", (done,), created_at=at, updated_at=at)
    msg = wire.publication_message(pub)
    assert msg.state == ppb.STATE_DONE and list(msg.results[0].retired) == ["old"]
    assert wire.publication_of(msg) == pub
    assert wire.publication_message(pub.with_result(failed)).state == ppb.STATE_FAILED


def test_a_publish_request_names_one_subject_and_its_targets() -> None:
    request = publications.PublishRequest(
        build_id="b1",
        glance=(publications.GlanceTarget("c", tags=("auto",), properties={"k": "v"}),),
        marketplace=publications.MarketplaceTarget(valid_for=timedelta(days=7)),
    )
    msg = wire.publish_message(request)
    assert msg.WhichOneof("subject") == "build_id"
    assert msg.marketplace.valid_for.seconds == 7 * 86400
    assert wire.publish_of(msg) == request
    bare = wire.publish_message(publications.PublishRequest(artifact_id="a1"))
    assert not bare.HasField("marketplace") and wire.publish_of(bare).marketplace is None


def test_a_stored_publication_keeps_its_states_as_words() -> None:
    """Records are JSON with "pending"/"done"… states, as before the models."""
    old = (
        b'{"artifact_id": "a1", "build_id": "", "created_at": "2026-12-01T10:00:00+00:00",'
        b' "id": "p1", "results": [{"artifact_id": "a1", "cloud": "c", "entry_identifier": "",'
        b' "error": "", "image_id": "i", "image_name": "n", "kind": "glance", "method": "upload",'
        b' "region": "", "retired": ["x"], "state": "done", "target": "c"}],'
        b' "updated_at": "2026-12-01T10:01:00+00:00"}'
    )
    pub = record_of(old)
    assert pub.state == PublicationState.DONE and pub.results[0].retired == ("x",)
    assert record_bytes(pub) == old
