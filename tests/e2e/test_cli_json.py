"""Every kiln verb with --json, run as a script would against a real `kiln
up` stack: each one's stdout is one JSON document (JSON lines for a followed
build and for logs) that matches its schema in tests/data/cli-json.schema.json,
with nothing else on stdout; an error is one JSON object on stderr with the
exit code docs/cli.md's table gives."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support import REPO, kiln, kiln_up

from kiln_common.ids import new_id

pytestmark = [pytest.mark.e2e, pytest.mark.build]

SCHEMAS = json.loads((REPO / "tests" / "data" / "cli-json.schema.json").read_text())
RECIPE = """\
name: json-cli
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "echo json > /etc/kiln-json"
outputs: [tar.zst]
test: {boot: false}
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with kiln_up(tmp_path) as environ:
        yield environ


def check(verb: str, document: Any) -> Any:
    schema = {**SCHEMAS, **SCHEMAS["verbs"][verb]}
    jsonschema.validate(document, schema)
    return document


def run(env: dict[str, str], verb: str, *args: str) -> Any:
    """The verb with --json: its stdout parsed and checked against its schema."""
    done = kiln(env, *verb.split(), *args, "--json", timeout=900)
    return check(verb, json.loads(done.stdout))


def lines(env: dict[str, str], verb: str, *args: str) -> list[Any]:
    done = kiln(env, *verb.split(), *args, "--json", timeout=900)
    return [json.loads(line) for line in done.stdout.splitlines()]


def fails(env: dict[str, str], code: int, *args: str) -> dict[str, Any]:
    """A verb that fails: nothing on stdout, its error as one JSON object on stderr."""
    done = kiln(env, *args, "--json", check=False)
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    error = check("error", json.loads(done.stderr))
    assert error["error"]["exit"] == code
    return dict(error["error"])


def test_every_verb_speaks_json(env: dict[str, str], tmp_path: Path) -> None:
    up = run(env, "up")  # the stack kiln_up started: found, not started again
    assert up["builder"] and up["publisher_http"].startswith("http")

    data = tmp_path / "data.bin"
    data.write_bytes(b"kiln" * 1000)
    pushed = run(env, "artifact push", str(data), "--label", "team=json")
    shown = run(env, "artifact show", pushed["id"])
    assert shown["checksums"] == pushed["checksums"] and shown["labels"]["team"] == "json"
    assert [a["id"] for a in run(env, "artifact ls", "--label", "team=json")] == [pushed["id"]]
    url = run(env, "artifact url", pushed["id"], "--expires", "10m")
    assert url["expires_seconds"] == 600
    got = run(env, "artifact get", pushed["id"], "-o", str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == data.read_bytes() and got["artifact"]["id"]

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.replace("bookworm", "Bookworm!"))
    checked = json.loads(kiln(env, "recipe", "check", str(recipe), str(bad), "--json",
                              check=False).stdout)  # fmt: skip
    check("recipe check", checked)
    assert [c["valid"] for c in checked] == [True, False] and checked[1]["problems"]

    followed = lines(env, "build submit", str(recipe), "--follow")
    for event in followed[:-1]:
        check("build submit --follow", event)
    final = check("build submit --follow (last)", followed[-1])["build"]
    assert final["state"] == "BUILD_STATE_SUCCEEDED", final
    assert {"state", "step"} <= {k for e in followed[:-1] for k in e}
    again = run(env, "build submit", str(recipe))  # a cached repeat, not followed
    assert again["id"] != final["id"]
    assert final["id"] in {b["id"] for b in run(env, "build ls", "--name", "json-cli")}
    assert run(env, "build show", final["id"])["id"] == final["id"]
    logged = lines(env, "build logs", final["id"])
    assert logged and all(check("build logs", entry) for entry in logged)
    ended = fails(env, 1, "build", "cancel", final["id"])  # it has ended: nothing to cancel
    assert ended["code"] == "FAILED_PRECONDITION"

    made = run(env, "token create", "--tenant", "json-team", "--role", "viewer")
    assert made["record"]["id"] in {t["id"] for t in run(env, "token ls")}
    viewer = {**env, "KILN_TOKEN": made["token"]}
    assert run(viewer, "whoami")["tenant"] == "json-team"
    assert fails(viewer, 6, "artifact", "rm", pushed["id"])["code"] == "PERMISSION_DENIED"
    assert run(env, "token revoke", made["record"]["id"])["revoked_at"]

    assert run(env, "schedule ls") == [] and run(env, "channel ls", "json-cli")
    assert run(env, "artifact rm", pushed["id"]) == {"deleted": [pushed["id"]]}
    assert fails(env, 4, "artifact", "show", pushed["id"])["code"] == "NOT_FOUND"
    assert fails(env, 2, "artifact", "show", "../etc")["code"] == "INVALID_ARGUMENT"
    assert fails(env, 2, "build", str(bad))["code"] == "INVALID_ARGUMENT"
    nobody = fails(env, 4, "build", "show", new_id())
    assert "does not exist" in nobody["message"]

    assert run(env, "down") == {"stopped": True}
    assert fails(env, 5, "artifact", "ls")["code"] == "UNAVAILABLE"  # no stack running
