"""Faults, with real processes and nothing mocked: storage unreachable for
every attempt (two builders, both taking attempts, exactly one build.failed),
storage SIGKILLed before the build and brought back by `kiln up` after its
first attempt failed at the upload (retried, then succeeds), a build that can
never succeed (not retried), nats-server SIGKILLed mid-build and restarted by
`kiln up` under a following `kiln build --follow` (the other parts, publisher
included, keep their pids). Storage SIGKILLed in the middle of a build's
upload is not staged here: the client's retries of one call are
tests/integration/test_storage_faults.py's, and a whole attempt lost to
storage is the second test's. Every build is tiny, from the cached bootstrap
layer, without a boot test; each test has its own layer cache holding only
that layer, so its run step really runs (a sleeping one sleeps)."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    KILN,
    REPO,
    bookworm_bootstrap_layer,
    build_events,
    cache_with,
    event_types,
    kill_part,
    kiln,
    restart_dead_parts,
    stack_token,
    wait_until,
)

from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_client import BuilderClient, StorageClient
from kiln_common.builds import Build, BuildState, StepState
from kiln_common.lifecycle import TERMINAL
from kiln_common.proc import stop_pid
from kiln_devstack.devservers import free_port, start_nats
from kiln_devstack.stack import Stack, start_builder

pytestmark = [pytest.mark.e2e, pytest.mark.build]

RECIPE = """\
name: faults
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "SCRIPT"
outputs: [tar]
"""
# Settings that make faults quick to see: a silent worker is presumed dead
# after 4 s, an unreachable storage service fails the attempt after 3 s of
# retries, a passing failure is retried after 1 s, three deliveries in all.
FAST = {
    "KILN_BUILDER_ACK_WAIT_SECONDS": "4",
    "KILN_BUILDER_STORAGE_RETRY_SECONDS": "3",
    "KILN_BUILDER_MAX_DELIVER": "3",
    "KILN_BUILDER_RETRY_BACKOFF_SECONDS": "[1]",
    "KILN_BUILDER_BOOT_TEST": "false",
}


@pytest.fixture(scope="module")
def bootstrap_layer() -> list[Path]:
    return bookworm_bootstrap_layer()


def write_recipe(where: Path, script: str = "") -> Path:
    """A tar of the bootstrap layer, after script if one is given (without
    one there is no run layer to save: the storage tests build faster)."""
    where.mkdir(parents=True, exist_ok=True)
    text = RECIPE.replace("SCRIPT", script)
    if not script:
        text = text.replace('run:\n  - inline: ""\n', "")
    path = where / "recipe.yaml"
    path.write_text(text)
    return path


def up(tmp_path: Path, layers: list[Path], **settings: str) -> Iterator[dict[str, str]]:
    """A `kiln up` stack under tmp_path with FAST builder settings (and these)."""
    environ = {
        **os.environ,
        **FAST,
        "KILN_BUILDER_CACHE_DIR": str(cache_with(layers, tmp_path / "cache")),
        "KILN_HOME": str(tmp_path / "home"),
        "KILN_CACHE": str(REPO / ".cache"),
        "KILN_BUILDER_WORK_ROOT": str(tmp_path / "work"),
        **settings,
    }
    for name in ("KILN_STORAGE", "KILN_BUILDER"):
        environ.pop(name, None)
    try:
        kiln(environ, "up", timeout=180)
        with stack_token(tmp_path / "home"):
            yield environ
    finally:
        kiln(environ, "down", check=False)


@pytest.fixture
def env(tmp_path: Path, bootstrap_layer: list[Path]) -> Iterator[dict[str, str]]:
    yield from up(tmp_path, bootstrap_layer)


def stack_of(env: dict[str, str]) -> Stack:
    found = Stack.load(Path(env["KILN_HOME"]))
    assert found is not None
    return found


def submit(address: str, recipe: Path) -> str:
    from kiln_cli.build_cmd import checked_source

    with BuilderClient(address) as client:
        return client.submit(checked_source(recipe), skip_boot_test=True).id


def record(address: str, build_id: str) -> Build:
    with BuilderClient(address) as client:
        return client.get(build_id)


def ended(address: str, build_id: str) -> Build | None:
    build = record(address, build_id)
    return build if build.state in TERMINAL else None


def stored_artifacts(env: dict[str, str], build_id: str) -> list[spb.Artifact]:
    with StorageClient(stack_of(env).storage) as client:
        return list(client.list({"build-id": build_id}))


def handed_back(address: str, build_id: str) -> Build | None:
    """The record once its first attempt failed and went back to the queue."""
    build = record(address, build_id)
    queued_again = build.state == BuildState.QUEUED and build.error is not None
    return build if queued_again or build.attempt >= 2 or build.state in TERMINAL else None


def lifecycle_counts(nats_url: str, build_id: str) -> Counter[str]:
    """How often each of the build's lifecycle events was sent (not its steps,
    nor other events about it: latest moving to it is a channel.moved)."""
    types = event_types(build_events(nats_url, build_id))
    return Counter(t for t in types if t.startswith("build.") and t != "build.step")


def test_storage_away_for_every_attempt_fails_the_build_once(
    tmp_path: Path, bootstrap_layer: list[Path]
) -> None:
    """Two builders whose storage address answers nothing: every attempt
    fails for a passing reason, the build is retried up to MAX_DELIVER, then
    fails once, with the last attempt's error. Builder a takes the first
    attempt and is stopped (not paused: a paused process's NATS client once
    lost a delivery) while the retry waits, so b takes the second; a is
    started again for the third."""
    home = tmp_path / "home"
    nats = start_nats(home / "nats", home / "nats.log")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    stack = Stack(str(home), nats.url, storage=dead, storage_http=f"http://{dead}")
    cache_with(bootstrap_layer, tmp_path / "cache")
    pids = [nats.pid]
    addresses = {name: f"127.0.0.1:{free_port()}" for name in ("a", "b")}

    def start(name: str) -> int:
        own = {**FAST, "KILN_BUILDER_WORKER_NAME": name,
               "KILN_BUILDER_CACHE_DIR": str(tmp_path / "cache"),
               "KILN_BUILDER_WORK_ROOT": str(tmp_path / "work"),
               # Time to stop a and start b before the second attempt is due.
               "KILN_BUILDER_RETRY_BACKOFF_SECONDS": "[12]"}  # fmt: skip
        pid = start_builder(stack, addresses[name], home / f"{name}.log", own)
        pids.append(pid)
        return pid

    try:
        first = start("a")
        build_id = submit(addresses["a"], write_recipe(tmp_path / "r"))
        wait_until("the first attempt to be handed back",
                   lambda: handed_back(addresses["a"], build_id), timeout=300)  # fmt: skip
        stop_pid(first)
        start("b")
        wait_until("the second attempt", lambda: record(addresses["b"], build_id).attempt >= 2,
                   timeout=120)  # fmt: skip
        start("a")
        final = wait_until("the build to end", lambda: ended(addresses["b"], build_id), timeout=300)
        assert final.state == BuildState.FAILED, final
        assert final.attempt == 3
        assert "failed to connect" in final.error.message, (
            final.error
        )  # storage, not "delivered 3 times"

        # Long enough for a redelivery (ACK_WAIT) or a max-deliveries advisory
        # to try to end it again.
        time.sleep(6)
        events = build_events(nats.url, build_id)
        counts = Counter(event_types(events))
        assert counts["build.failed"] == 1, counts
        assert counts["build.queued"] == 1 and counts["build.started"] == 3, counts
        assert not counts["build.succeeded"] and not counts["build.cancelled"]
        failed = next(e for e in events if e["type"] == "build.failed")
        assert failed["data"]["error"] == final.error.message
        starts = [e for e in events if e["type"] == "build.started"]
        assert [e["data"]["attempt"] for e in starts] == [1, 2, 3]
        assert starts[-1]["data"]["worker"] == final.worker
        assert {e["data"]["worker"].split(":")[0] for e in starts} == {"a", "b"}  # both took one
        assert record(addresses["a"], build_id) == final  # nothing changed it since
    finally:
        for pid in reversed(pids):
            stop_pid(pid)


@pytest.fixture
def env_slow_retry(tmp_path: Path, bootstrap_layer: list[Path]) -> Iterator[dict[str, str]]:
    """A retry waits 4 s: time for `kiln up` to bring storage back first."""
    yield from up(tmp_path, bootstrap_layer, KILN_BUILDER_RETRY_BACKOFF_SECONDS="[4]")


def test_storage_back_after_the_first_attempt_the_retry_succeeds(
    env_slow_retry: dict[str, str], tmp_path: Path
) -> None:
    """Storage is down when the build starts; the first attempt fails at its
    upload (a passing failure) and is handed back; storage is started again on
    its port; a later attempt succeeds. queued and succeeded are sent once,
    started once per attempt, failed never."""
    env = env_slow_retry
    stack = stack_of(env)
    kill_part(Path(env["KILN_HOME"]), "storage")
    build_id = submit(stack.builder, write_recipe(tmp_path / "r"))

    def handed_back() -> bool:
        build = record(stack.builder, build_id)
        return build.attempt >= 2 or (build.state == BuildState.QUEUED and build.error is not None)

    wait_until("the first attempt to fail", handed_back, timeout=300)
    before = dict(stack.pids)
    after = restart_dead_parts(env)
    assert after["storage"] != before["storage"]
    assert {k: after[k] for k in ("nats", "builder")} == {k: before[k] for k in ("nats", "builder")}
    final = wait_until("the build to end", lambda: ended(stack.builder, build_id), timeout=300)
    assert final.state == BuildState.SUCCEEDED, final.error
    assert final.attempt >= 2
    counts = lifecycle_counts(stack.nats_url, build_id)
    expected = {"build.queued": 1, "build.started": final.attempt, "build.succeeded": 1}
    assert counts == Counter(expected), counts
    stored = stored_artifacts(env, build_id)
    assert {a.labels["kiln-attempt"] for a in stored} == {str(final.attempt)}
    assert {a.id for a in stored} == {a.artifact_id for a in final.artifacts}


def test_a_build_that_cannot_succeed_is_not_retried(env: dict[str, str], tmp_path: Path) -> None:
    stack = stack_of(env)
    recipe = write_recipe(tmp_path / "r", script="echo no such luck; exit 3")
    done = kiln(env, "build", str(recipe), "--no-boot-test", "--follow", check=False)
    assert done.returncode == 1, done.stderr
    build_id = done.stderr.split()[1]
    final = record(stack.builder, build_id)
    assert final.state == BuildState.FAILED and final.attempt == 1
    assert final.error.step == "run"
    counts = lifecycle_counts(stack.nats_url, build_id)
    assert counts == Counter({"build.queued": 1, "build.started": 1, "build.failed": 1}), counts


def follow(env: dict[str, str], recipe: Path, log: Path) -> subprocess.Popen[str]:
    """`kiln build RECIPE --follow` as a user runs it, its stderr to log."""
    return subprocess.Popen(
        [KILN, "build", str(recipe), "--no-boot-test", "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


def running_step(address: str, build_id: str, name: str) -> bool:
    steps = record(address, build_id).steps
    return any(s.name == name and s.state == StepState.RUNNING for s in steps)


def build_id_in(log: Path) -> str | None:
    words = log.read_text().split()
    return words[1] if len(words) > 1 and words[0] == "build" else None


def test_nats_killed_mid_build_and_restarted_by_kiln_up(
    env: dict[str, str], tmp_path: Path
) -> None:
    stack = stack_of(env)
    home = Path(env["KILN_HOME"])
    log = tmp_path / "follow.log"
    follower = follow(env, write_recipe(tmp_path / "r", script="echo sleeping; sleep 20"), log)
    try:
        build_id = wait_until("the build id", lambda: build_id_in(log), timeout=60)
        wait_until(
            "the run step", lambda: running_step(stack.builder, build_id, "run"), timeout=120
        )
        before = dict(stack.pids)
        kill_part(home, "nats")
        after = restart_dead_parts(env)
        assert stack_of(env).nats_url == stack.nats_url  # the same port
        assert after["nats"] != before["nats"]
        others = ("storage", "builder", "publisher")
        assert {k: after[k] for k in others} == {k: before[k] for k in others}
        follower.communicate(timeout=300)
    finally:
        if follower.poll() is None:
            follower.kill()
    followed = log.read_text()
    assert follower.returncode == 0, followed
    assert "Traceback" not in followed and "build succeeded" in followed
    final = record(stack.builder, build_id)
    assert final.state == BuildState.SUCCEEDED
    counts = lifecycle_counts(stack.nats_url, build_id)
    assert counts["build.queued"] == 1 and counts["build.succeeded"] == 1, counts
    assert not counts["build.failed"] and counts["build.started"] == final.attempt, counts
    stored = stored_artifacts(env, build_id)
    assert sorted(a.labels["kiln-kind"] for a in stored) == ["build-log", "image", "sbom"]
    assert {a.id for a in stored} == {a.artifact_id for a in final.artifacts}
