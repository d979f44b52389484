"""The commands the storage issue promises, run exactly as a user would,
against a real `kiln up` stack (nats-server and the storage service as processes)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import REPO, kiln, payload, wait_until

from kiln_common.proc import pid_alive
from kiln_devstack.local_ca import make_local_tls

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    home = tmp_path / "kiln-home"
    environ = {**os.environ, "KILN_HOME": str(home)}
    environ.pop("KILN_STORAGE", None)
    try:
        yield environ
    finally:
        kiln(environ, "down", check=False)


def test_the_storage_commands_from_the_issue(env: dict[str, str], tmp_path: Path) -> None:
    up = kiln(env, "up")
    assert "kiln is up" in up.stdout
    stack = json.loads((Path(env["KILN_HOME"]) / "stack.json").read_text())
    kiln(env, "up")  # a second `up` finds the running stack and starts nothing
    assert json.loads((Path(env["KILN_HOME"]) / "stack.json").read_text())["pids"] == stack["pids"]

    data = payload(40 * 1024 * 1024 + 77, seed=41)
    src = tmp_path / "disk.img"
    src.write_bytes(data)
    artifact_id = kiln(env, "artifact", "push", str(src), "--label", "name=demo").stdout.strip()
    assert len(artifact_id) == 26

    listed = kiln(env, "artifact", "ls", "--label", "name=demo").stdout
    assert artifact_id in listed and str(len(data)) in listed
    assert kiln(env, "artifact", "ls", "--label", "name=nothing").stdout == ""

    url = kiln(env, "artifact", "url", artifact_id).stdout.strip()
    head = tmp_path / "head"
    curl = subprocess.run(
        ["curl", "-sS", "-r", "0-1023", "-o", str(head), "-w", "%{http_code}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    assert curl.stdout == "206" and head.read_bytes() == data[:1024]

    dest = tmp_path / "copy.img"
    kiln(env, "artifact", "get", artifact_id, "-o", str(dest))
    assert dest.read_bytes() == data

    # A partial download resumes from where it stopped.
    dest.unlink()
    partial = tmp_path / "copy.img.part"
    partial.write_bytes(data[: 7 * 1024 * 1024 + 3])
    kiln(env, "artifact", "get", artifact_id, "-o", str(dest))
    assert dest.read_bytes() == data and not partial.exists()

    # A corrupt partial file is detected, removed, and the next run succeeds.
    partial.write_bytes(b"garbage" * 1000)
    bad = kiln(env, "artifact", "get", artifact_id, "-o", str(dest), check=False)
    assert bad.returncode == 1 and "corrupt" in bad.stderr and not partial.exists()
    kiln(env, "artifact", "get", artifact_id, "-o", str(dest))
    assert dest.read_bytes() == data

    shown = kiln(env, "artifact", "show", artifact_id).stdout
    assert "sha512" in shown and "label     name=demo" in shown

    assert f"deleted {artifact_id}" in kiln(env, "artifact", "rm", artifact_id).stdout
    gone = kiln(env, "artifact", "rm", artifact_id, check=False)
    assert gone.returncode == 4 and gone.stderr.startswith("kiln: NOT_FOUND")

    assert "kiln is down" in kiln(env, "down").stdout
    assert not any(pid_alive(pid) for pid in stack["pids"].values())


def test_user_errors_are_one_line_never_a_traceback(env: dict[str, str], tmp_path: Path) -> None:
    down = kiln(env, "artifact", "ls", check=False)
    assert down.returncode == 5 and "kiln up" in down.stderr
    kiln(env, "up")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert "is empty" in kiln(env, "artifact", "push", str(empty), check=False).stderr
    missing = kiln(env, "artifact", "push", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    badlabel = kiln(
        env, "artifact", "push", str(REPO / "pyproject.toml"), "--label", "x", check=False
    )
    assert badlabel.returncode == 2 and "KEY=VALUE" in badlabel.stderr
    badid = kiln(env, "artifact", "url", "../../etc/passwd", check=False)
    assert badid.returncode == 2 and "INVALID_ARGUMENT" in badid.stderr
    for result in (down, missing, badlabel, badid):
        assert len(result.stderr.strip().splitlines()) == 1
    recipe = tmp_path / "bad.yaml"
    recipe.write_text('name: x\nversion: "1"\nfrom:\n  bootstrap: {distro: debian}\n')
    bad = kiln(env, "build", str(recipe), "--follow", check=False)
    assert bad.returncode == 2 and f"{recipe}:4: from.bootstrap.release" in bad.stderr
    unknown = kiln(env, "build", "show", "0" * 26, check=False)
    assert unknown.returncode == 4 and "NOT_FOUND" in unknown.stderr


@pytest.mark.build
def test_the_readme_demo_runs(tmp_path: Path) -> None:
    # The layer cache the bake tests use, so the demo's bootstrap is shared.
    environ = {
        **os.environ,
        "KILN_HOME": str(tmp_path / "home"),
        "KILN_CACHE": str(REPO / ".cache"),
    }
    done = subprocess.run(
        [str(REPO / "scripts/demo.sh")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "boot-test done" in done.stderr and "a qcow2 header" in done.stdout
    assert "HTTP 206" in done.stdout and done.stdout.rstrip().endswith("demo: OK")


def test_tokens_from_the_cli_give_each_role_its_calls_and_a_revoked_one_none(
    env: dict[str, str], tmp_path: Path
) -> None:
    """`kiln up` leaves the CLI an admin token; an admin makes a viewer's, which
    reads but cannot write or manage tokens, and stops at once when revoked."""
    kiln(env, "up")
    assert kiln(env, "whoami").stdout.startswith(tuple("0123456789abcdefghjkmnpqrstvwxyz"))
    assert ": admin of tenant local (static token)" in kiln(env, "whoami").stdout
    made = kiln(env, "token", "create", "--tenant", "team-a", "--role", "viewer",
                "--expires", "1d", "--description", "ci")  # fmt: skip
    bearer = made.stdout.strip()
    token_id = bearer.split("_")[1]
    assert "viewer of team-a, expires 20" in made.stderr
    assert token_id in kiln(env, "token", "ls", "--tenant", "team-a").stdout
    assert bearer not in kiln(env, "token", "ls").stdout  # never the secret again

    viewer = {**env, "KILN_TOKEN": bearer}
    assert "viewer of tenant team-a" in kiln(viewer, "whoami").stdout
    kiln(viewer, "artifact", "ls")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    refused = kiln(viewer, "artifact", "push", str(src), check=False)
    assert refused.returncode == 6 and "PERMISSION_DENIED" in refused.stderr
    refused = kiln(viewer, "token", "ls", check=False)
    assert refused.returncode == 6 and "PERMISSION_DENIED" in refused.stderr

    assert f"revoked {token_id}" in kiln(env, "token", "revoke", token_id).stdout
    # Storage sees the revocation within its token cache's 2 s (the builder, at once).
    gone = wait_until(
        "the revocation to reach storage",
        lambda: (r := kiln(viewer, "artifact", "ls", check=False)).returncode and r,
        timeout=5,
        interval=0.5,
    )
    assert "UNAUTHENTICATED" in gone.stderr and "revoked" in gone.stderr
    refused = kiln(viewer, "whoami", check=False)  # the builder, which revoked it
    assert "UNAUTHENTICATED" in refused.stderr
    forged = kiln({**env, "KILN_TOKEN": "kiln_" + "0" * 26 + "_" + "A" * 43}, "artifact", "ls",
                  check=False)  # fmt: skip
    assert forged.returncode == 6 and "UNAUTHENTICATED" in forged.stderr
    bad = kiln(env, "token", "create", "--tenant", "Team A", "--role", "viewer", check=False)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """The gRPC health answer at address over TLS trusting credentials (None: plain)."""
    opened = (
        grpc.secure_channel(address, credentials)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with opened as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_kiln_up_tls_serves_every_api_over_tls_from_its_own_ca(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert "clients trust" in kiln(env, "up", "--tls").stdout
    stack = json.loads((Path(env["KILN_HOME"]) / "stack.json").read_text())
    ca = Path(stack["tls_ca"])
    # The CLI finds the stack's CA itself.
    data = payload(1024 * 1024, seed=7)
    (tmp_path / "small.img").write_bytes(data)
    pushed = kiln(env, "artifact", "push", str(tmp_path / "small.img"), "--label", "name=tls")
    url = kiln(env, "artifact", "url", pushed.stdout.strip()).stdout.strip()
    assert url.startswith("https://127.0.0.1:")
    got = tmp_path / "got"
    curl = ["curl", "-sS", "-o", str(got), "-w", "%{http_code}"]
    trusted = subprocess.run([*curl, "--cacert", str(ca), url], capture_output=True, text=True)
    untrusted = subprocess.run([*curl, url], capture_output=True, text=True)
    assert trusted.stdout == "200" and got.read_bytes() == data
    assert untrusted.returncode == 60  # curl: the peer's certificate cannot be verified
    market = subprocess.run(
        [*curl, "--cacert", str(ca), stack["publisher_http"] + "/"], capture_output=True, text=True
    )
    assert market.stdout == "200"
    # Every gRPC API: our CA gets through; another CA, or none, does not.
    ours = grpc.ssl_channel_credentials(ca.read_bytes())
    other = grpc.ssl_channel_credentials(make_local_tls(tmp_path / "other").ca.read_bytes())
    answers = {
        part: (_health(stack[part], ours), _health(stack[part], other), _health(stack[part], None))
        for part in ("storage", "builder", "publisher")
    }
    assert answers == {part: ("SERVING", "UNAVAILABLE", "UNAVAILABLE") for part in answers}
