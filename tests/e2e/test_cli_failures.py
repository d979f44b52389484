"""Every kiln verb's failure path against a real `kiln up` stack (nats-server,
storage, builder, publisher as processes): an unknown id is 4, bad input 2, a
service address where nothing listens 5, a forged or too weak token 6. In text
mode the error is one line on stderr (never a traceback); with --json it is
one JSON error object on stderr and stdout stays empty; the exit code is
docs/cli.md's table's. The verbs come from the CLI's parser: one without a
case here fails test_every_verb_has_a_failure_case."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import pytest
from cli_support import leaf_verbs
from support import REPO, kiln, kiln_up, scratch

from kiln_common.ids import new_id

pytestmark = pytest.mark.e2e

SCHEMAS = json.loads((REPO / "tests" / "data" / "cli-json.schema.json").read_text())
ERROR_SCHEMA = {**SCHEMAS, **SCHEMAS["verbs"]["error"]}
GOOD_RECIPE = """\
name: fails
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
outputs: [tar.zst]
"""
BAD_RECIPE = 'name: fails\nversion: "1.0"\nfrom:\n  bootstrap: {distro: debian}\n'
# A token of the right shape that no stack issued.
FORGED = "kiln_" + "0" * 26 + "_" + "A" * 43
ID = new_id()  # an id nothing has
ENTRY = "A" * 27  # a marketplace identifier nothing has


@dataclass(frozen=True)
class Case:
    """One failing command line. In argv and env, {tmp} is the module's
    scratch directory and {dead} a loopback address where nothing listens."""

    argv: tuple[str, ...]
    exit: int
    code: str
    env: dict[str, str] = field(default_factory=dict)
    token: str = ""  # "forged", or "viewer": a real token of a role that may not
    lines: int = 1  # a recipe's problems follow the error's line, one a line
    verdict: bool = False  # the answer (a failed check) is on stdout, stderr stays empty


def case(*argv: str, exit: int, code: str, **more: object) -> Case:
    return Case(argv=argv, exit=exit, code=code, **more)  # type: ignore[arg-type]


GONE, BAD, DOWN, DENIED = 4, 2, 5, 6
CASES: dict[str, Case] = {
    "up": case("up", exit=1, code="FAILED", env={"KILN_HOME": "{tmp}/a-file"}),
    "down": case("down", exit=1, code="FAILED", env={"KILN_HOME": "{tmp}/a-file"}),
    "artifact push": case("artifact", "push", "{tmp}/missing.img", exit=BAD,
                          code="INVALID_ARGUMENT"),
    "artifact ls": case("--storage", "{dead}", "artifact", "ls", exit=DOWN, code="UNAVAILABLE"),
    "artifact ls (no stack running)": case("artifact", "ls", exit=DOWN, code="UNAVAILABLE",
                                           env={"KILN_HOME": "{tmp}/no-stack"}),
    "artifact ls (a CA file that is not there)": case("--ca-file", "{tmp}/no-ca.pem", "artifact",
                                                      "ls", exit=BAD, code="INVALID_ARGUMENT"),
    "artifact show": case("artifact", "show", ID, exit=GONE, code="NOT_FOUND"),
    "artifact url": case("artifact", "url", "../etc/passwd", exit=BAD, code="INVALID_ARGUMENT"),
    "artifact get": case("artifact", "get", ID, "-o", "{tmp}/got", exit=GONE, code="NOT_FOUND"),
    "artifact rm": case("artifact", "rm", ID, exit=GONE, code="NOT_FOUND"),
    "recipe check": case("recipe", "check", "{tmp}/bad.yaml", exit=1, code="", verdict=True),
    "build submit": case("build", "{tmp}/bad.yaml", exit=BAD, code="INVALID_ARGUMENT", lines=2),
    "build ls": case("--builder", "{dead}", "build", "ls", exit=DOWN, code="UNAVAILABLE"),
    "build show": case("build", "show", ID, exit=GONE, code="NOT_FOUND"),
    "build logs": case("build", "logs", ID, exit=GONE, code="NOT_FOUND"),
    "build cancel": case("build", "cancel", ID, exit=GONE, code="NOT_FOUND"),
    "publish": case("publish", ID, "--marketplace", exit=GONE, code="NOT_FOUND"),
    "market search": case("--publisher", "{dead}", "market", "search", exit=DOWN,
                          code="UNAVAILABLE"),
    "market show": case("market", "show", ENTRY, exit=GONE, code="NOT_FOUND"),
    "market verify": case("market", "verify", ENTRY, exit=GONE, code="NOT_FOUND"),
    "market verify (a file it cannot read)": case("market", "verify", "--file",
                                                  "{tmp}/missing.json", exit=BAD,
                                                  code="INVALID_ARGUMENT"),
    "market deprecate": case("market", "deprecate", ENTRY, exit=GONE, code="NOT_FOUND"),
    "market key create": case("market", "key", "create", "not-an-address", "--keyring",
                              "{tmp}/ring", exit=BAD, code="INVALID_ARGUMENT"),
    "market key ls": case("market", "key", "ls", "--keyring", "{tmp}/bad.yaml", exit=BAD,
                          code="INVALID_ARGUMENT"),
    "market key revoke": case("market", "key", "revoke", "no-such-kid", exit=GONE,
                              code="NOT_FOUND"),
    "schedule add": case("schedule", "add", "{tmp}/good.yaml", "--every", "1h", exit=DENIED,
                         code="UNAUTHENTICATED", token="forged"),
    "schedule ls": case("--builder", "{dead}", "schedule", "ls", exit=DOWN, code="UNAVAILABLE"),
    "schedule show": case("schedule", "show", ID, exit=GONE, code="NOT_FOUND"),
    "schedule rm": case("schedule", "rm", ID, exit=GONE, code="NOT_FOUND"),
    "schedule pause": case("schedule", "pause", ID, exit=GONE, code="NOT_FOUND"),
    "schedule resume": case("schedule", "resume", ID, exit=GONE, code="NOT_FOUND"),
    "schedule run": case("schedule", "run", ID, exit=GONE, code="NOT_FOUND"),
    "schedule runs": case("schedule", "runs", ID, exit=GONE, code="NOT_FOUND"),
    "channel ls": case("channel", "ls", "fails", exit=DENIED, code="UNAUTHENTICATED",
                       token="forged"),
    "channel set": case("channel", "set", "fails", "stable", ID, exit=GONE, code="NOT_FOUND"),
    "channel history": case("channel", "history", "fails", "stable", exit=GONE,
                            code="NOT_FOUND"),
    "channel policy": case("channel", "policy", "fails", "stable", "--requires", "candidate",
                           exit=BAD, code="INVALID_ARGUMENT"),
    "channel revoke": case("channel", "revoke", "fails", "1.0-1", exit=GONE, code="NOT_FOUND"),
    "token create": case("token", "create", "--tenant", "Team A", "--role", "viewer",
                         exit=BAD, code="INVALID_ARGUMENT"),
    "token ls": case("token", "ls", exit=DENIED, code="PERMISSION_DENIED", token="viewer"),
    "token revoke": case("token", "revoke", ID, exit=GONE, code="NOT_FOUND"),
    "whoami": case("whoami", exit=DENIED, code="UNAUTHENTICATED", token="forged"),
    "config show": case("config", "show", exit=BAD, code="INVALID_ARGUMENT",
                        env={"KILN_CONFIG": "{tmp}/bad-config.yaml"}),
    "config use-context": case("config", "use-context", "nowhere", exit=BAD,
                               code="INVALID_ARGUMENT"),
    "completion": case("completion", "fish", exit=BAD, code="INVALID_ARGUMENT"),
}  # fmt: skip
MODES = ("text", "json")


def test_every_verb_has_a_failure_case() -> None:
    # A case is named for its verb, or "VERB (what else goes wrong)".
    assert {name.split(" (")[0] for name in CASES} == set(leaf_verbs())


def _dead_address() -> str:
    """A loopback port nothing listens on (bound for a moment, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    tmp: Path
    viewer: str  # a viewer's token: it may read, not manage tokens
    dead: str


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with scratch(request, "cli-failures") as tmp, kiln_up(tmp) as env:
        (tmp / "a-file").write_text("not a directory\n")
        (tmp / "good.yaml").write_text(GOOD_RECIPE)
        (tmp / "bad.yaml").write_text(BAD_RECIPE)
        (tmp / "bad-config.yaml").write_text("contexts: [\n")  # not YAML
        made = kiln(env, "token", "create", "--tenant", "fails", "--role", "viewer", "--json")
        yield Stack(env, tmp, json.loads(made.stdout)["token"], _dead_address())


def _command(stack: Stack, verb: str, mode: str) -> tuple[list[str], dict[str, str]]:
    given = CASES[verb]

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(stack.tmp)).replace("{dead}", stack.dead)

    argv = [fill(a) for a in given.argv] + (["--json"] if mode == "json" else [])
    env = {**stack.env, **{k: fill(v) for k, v in given.env.items()}}
    if given.token:
        env["KILN_TOKEN"] = FORGED if given.token == "forged" else stack.viewer
    return argv, env


@pytest.fixture(scope="module")
def ran(stack: Stack) -> dict[tuple[str, str], subprocess.CompletedProcess[str]]:
    """Every case in both modes, side by side: an unreachable service costs
    the client's retries (about 20 s), paid once for all of them."""
    # The slow ones (the client retrying an address) first, so the rest overlap them.
    slow = sorted(CASES, key=lambda verb: "{dead}" not in CASES[verb].argv)
    jobs = [(verb, mode) for verb in slow for mode in MODES]

    def one(job: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        argv, env = _command(stack, *job)
        return kiln(env, *argv, check=False, timeout=120)

    # Mostly waiting (on retries, on the services): more than the cores.
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(jobs, pool.map(one, jobs), strict=True))


@pytest.mark.parametrize("verb", list(CASES))
def test_a_failure_is_one_line_and_its_exit_code(
    verb: str, ran: dict[tuple[str, str], subprocess.CompletedProcess[str]]
) -> None:
    given, done = CASES[verb], ran[verb, "text"]
    assert done.returncode == given.exit, done.stderr
    assert "Traceback" not in done.stderr
    if given.verdict:  # the check's answer, on stdout
        assert done.stdout.strip() and done.stderr == ""
        return
    assert done.stdout == ""  # nothing half-printed before the error
    assert done.stderr.startswith("kiln: ") and done.stderr.count("\n") == given.lines
    if given.exit in (GONE, DENIED):  # a service's answer names its status
        assert done.stderr.startswith(f"kiln: {given.code}: ")


@pytest.mark.parametrize("verb", list(CASES))
def test_with_json_a_failure_is_one_json_error_on_stderr(
    verb: str, ran: dict[tuple[str, str], subprocess.CompletedProcess[str]]
) -> None:
    given, done = CASES[verb], ran[verb, "json"]
    assert done.returncode == given.exit, done.stderr
    if given.verdict:  # the check's answer, as JSON on stdout
        assert done.stderr == "" and all(not r["valid"] for r in json.loads(done.stdout))
        return
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    error = json.loads(done.stderr)
    jsonschema.validate(error, ERROR_SCHEMA)
    assert error["error"]["code"] == given.code and error["error"]["exit"] == given.exit
