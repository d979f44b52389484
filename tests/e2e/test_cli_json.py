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
from cli_support import json_verbs
from support import REPO, kiln, kiln_up, wait_until

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


# The verbs whose output a test here checked: at the end, every verb with
# --json must be among them (a verb added without a case fails).
CHECKED: set[str] = set()


def check(verb: str, document: Any) -> Any:
    schema = {**SCHEMAS, **SCHEMAS["verbs"][verb]}
    jsonschema.validate(document, schema)
    CHECKED.add(verb)
    return document


def run(env: dict[str, str], verb: str, *args: str) -> Any:
    """The verb with --json: its stdout parsed and checked against its schema."""
    done = kiln(env, *verb.split(), *args, "--json", timeout=900)
    return check(verb, json.loads(done.stdout))


def state(env: dict[str, str], build_id: str) -> str:
    """A build's state (`build show` exits with an ended build's outcome)."""
    done = kiln(env, "build", "show", build_id, "--json", check=False)
    return str(check("build show", json.loads(done.stdout))["state"])


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
    # A build to cancel at once (queued, or in its first step): cancelled either way.
    doomed = run(env, "build submit", str(recipe), "--no-cache")
    assert run(env, "build cancel", doomed["id"])["id"] == doomed["id"]
    wait_until("the cancel", lambda: state(env, doomed["id"]) == "BUILD_STATE_CANCELLED",
               timeout=120, interval=0.5)  # fmt: skip
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

    assert run(env, "schedule ls") == []
    market_verbs(env, tmp_path)
    schedule_verbs(env, recipe)
    channel_verbs(env, final)
    config_verbs(env, tmp_path)
    assert run(env, "artifact rm", pushed["id"]) == {"deleted": [pushed["id"]]}
    assert fails(env, 4, "artifact", "show", pushed["id"])["code"] == "NOT_FOUND"
    assert fails(env, 2, "artifact", "show", "../etc")["code"] == "INVALID_ARGUMENT"
    assert fails(env, 2, "build", str(bad))["code"] == "INVALID_ARGUMENT"
    nobody = fails(env, 4, "build", "show", new_id())
    assert "does not exist" in nobody["message"]

    assert run(env, "down") == {"stopped": True}
    assert fails(env, 5, "artifact", "ls")["code"] == "UNAVAILABLE"  # no stack running
    unchecked = set(json_verbs()) - CHECKED
    assert not unchecked, f"verbs with --json this test does not run: {sorted(unchecked)}"


def market_verbs(env: dict[str, str], tmp_path: Path) -> None:
    """An artifact published to the stack's marketplace (its own endorser
    signs), found, shown, verified and deprecated; keys in a keyring of its own."""
    image = tmp_path / "image.qcow2"
    image.write_bytes(b"market" * 1000)
    pushed = run(env, "artifact push", str(image), "--label", "version=1.0")
    published = run(env, "publish", pushed["id"], "--marketplace")
    assert published["state"] == "STATE_DONE", published
    identifier = published["results"][0]["entry_identifier"]
    assert identifier in {e["entry"]["identifier"] for e in run(env, "market search")}
    assert run(env, "market show", identifier)["entry"]["artifact_id"] == pushed["id"]
    assert run(env, "market verify", identifier)["identifier"] == identifier
    assert run(env, "market deprecate", identifier)["entry"]["identifier"] == identifier
    ring = tmp_path / "keyring"
    made = run(env, "market key create", "ops@example.org", "--keyring", str(ring))
    assert [k["kid"] for k in run(env, "market key ls", "--keyring", str(ring))] == [made["kid"]]
    assert run(env, "market key revoke", made["kid"], "--keyring", str(ring))["kid"] == made["kid"]


def schedule_verbs(env: dict[str, str], recipe: Path) -> None:
    """A schedule of the recipe built above: run by hand once (its build is
    the cached result), paused, resumed, removed."""
    added = run(env, "schedule add", str(recipe), "--every", "1d")
    assert added["id"] in {s["id"] for s in run(env, "schedule ls")}
    assert run(env, "schedule show", added["id"])["name"] == "json-cli"
    run(env, "schedule pause", added["id"])
    run(env, "schedule resume", added["id"])
    run(env, "schedule run", added["id"])

    def ended() -> list[Any] | None:
        runs = run(env, "schedule runs", added["id"])
        return runs if runs and runs[0]["outcome"] != "running" else None

    runs = wait_until("the schedule's run to end", ended, timeout=300, interval=1)
    assert runs[0]["outcome"] in ("built", "unchanged") and runs[0]["manual"], runs
    assert run(env, "schedule rm", added["id"])["id"] == added["id"]


def channel_verbs(env: dict[str, str], built: dict[str, Any]) -> None:
    """The built recipe's channels: latest moved by itself; candidate and
    stable (after candidate) set by hand; then the build revoked from them."""
    assert "latest" in {c["channel"] for c in run(env, "channel ls", "json-cli")}
    policy = run(env, "channel policy", "json-cli", "stable", "--requires", "candidate",
                 "--for", "0s")  # fmt: skip
    assert policy["requires"]["channel"] == "candidate"
    assert run(env, "channel set", "json-cli", "candidate", built["id"])["build_id"] == built["id"]
    run(env, "channel set", "json-cli", "stable", built["id"])
    assert run(env, "channel history", "json-cli", "stable")["history"]
    revoked = run(env, "channel revoke", "json-cli", built["id"])
    assert built["id"] in revoked["builds"] and revoked["channels"]


def config_verbs(env: dict[str, str], tmp_path: Path) -> None:
    """A configuration file of two empty contexts (the local stack's services)."""
    file = tmp_path / "config.yaml"
    file.write_text("current-context: here\ncontexts:\n  here: {}\n  there: {}\n")
    configured = {**env, "KILN_CONFIG": str(file)}
    shown = run(configured, "config show")
    assert shown["context"] == "here" and shown["file"] == str(file)
    assert {"storage", "builder", "publisher", "token"} <= {r["setting"] for r in shown["settings"]}
    assert run(configured, "config use-context", "there") == {"context": "there", "file": str(file)}
