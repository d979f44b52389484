"""A submitted recipe bundle: YAML or a structure, its attached files kept
inside the bundle, and the same checks as a recipe file."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.struct_pb2 import Struct

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_client import wire
from kiln_recipe import RecipeError, bundle
from kiln_recipe.source import RecipeSource

RECIPE = 'name: t\nversion: "1"\nfrom:\n  bootstrap: {distro: debian, release: bookworm}\n'


def test_a_structure_becomes_yaml_with_whole_numbers_as_integers() -> None:
    doc = Struct()
    doc.update({"name": "t", "disk": {"size": 4294967296}, "ratio": 0.5, "list": [1, 2]})
    # Through the wire, as the Builder API receives it: every number a double.
    text = bundle.recipe_text(wire.recipe_of(pb.RecipeSource(structured=doc)))
    assert "size: 4294967296\n" in text and "ratio: 0.5" in text and "- 1\n" in text


def test_no_recipe_at_all_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="no recipe given"):
        bundle.recipe_text(RecipeSource())


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../x", "", "a\0b"])
def test_attached_files_stay_inside_the_bundle(tmp_path: Path, name: str) -> None:
    source = RecipeSource(yaml=RECIPE, files={name: b"x"})
    with pytest.raises(RecipeError, match="relative path"):
        bundle.materialise(source, tmp_path)
    assert not (tmp_path.parent / "x").exists()


def test_attachments_are_limited(tmp_path: Path) -> None:
    big = {"a": b"x" * (bundle.MAX_FILES_BYTES + 1)}
    with pytest.raises(RecipeError, match="MiB in all"):
        bundle.materialise(RecipeSource(yaml=RECIPE, files=big), tmp_path)


def test_check_gives_the_digest_of_recipe_and_files() -> None:
    text = RECIPE + "files:\n  - {path: /etc/motd, source: motd}\n"
    one, digest_one = bundle.check(RecipeSource(yaml=text, files={"motd": b"one"}))
    _, digest_two = bundle.check(RecipeSource(yaml=text, files={"motd": b"two"}))
    assert one.name == "t" and digest_one != digest_two


def test_problems_carry_field_and_line() -> None:
    with pytest.raises(RecipeError) as err:
        bundle.check(RecipeSource(yaml=RECIPE + "disk: {size: 1x}\n"))
    assert [(p.field, p.line) for p in bundle.problems(err.value)] == [("disk.size", 5)]
