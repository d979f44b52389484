"""tests/data/cli-json.schema.json has a schema for every kiln verb that takes
--json (the verbs as the CLI's parser defines them), and each is a valid JSON
Schema: a verb added later without one fails here, before any stack starts."""

from __future__ import annotations

import json

import jsonschema
from cli_support import json_verbs, leaf_verbs
from support import REPO

SCHEMAS = json.loads((REPO / "tests" / "data" / "cli-json.schema.json").read_text())
# Schemas of a verb's parts, not of a verb: the error object, and the lines
# of a followed build.
NOT_VERBS = {"error", "build submit --follow", "build submit --follow (last)"}


def test_every_verb_with_json_has_a_schema() -> None:
    missing = set(json_verbs()) - set(SCHEMAS["verbs"])
    assert not missing, f"no schema in cli-json.schema.json for: {sorted(missing)}"


def test_every_schema_is_of_a_verb_that_takes_json() -> None:
    strays = set(SCHEMAS["verbs"]) - set(json_verbs()) - NOT_VERBS
    assert not strays, f"schemas of no verb with --json: {sorted(strays)}"


def test_all_but_one_verb_take_json() -> None:
    # completion prints a shell script; every other verb has a record to print.
    assert [verb for verb, takes in leaf_verbs().items() if not takes] == ["completion"]


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_each_schema_is_valid_and_its_refs_resolve() -> None:
    for schema in SCHEMAS["verbs"].values():
        jsonschema.Draft202012Validator.check_schema({**SCHEMAS, **schema})
    names = {f"#/$defs/{name}" for name in SCHEMAS["$defs"]}
    assert set(_refs(SCHEMAS)) <= names
