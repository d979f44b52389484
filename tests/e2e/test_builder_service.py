"""The builder service for real: `kiln up` (nats-server, storage and builder
as processes), `kiln build` exactly as the issue names it, real builds, a
cancel midway, and a builder killed with SIGKILL mid-build whose build
another builder finishes, leaving one set of artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import kiln, kiln_up, loops_under, mounts_under, stack_channel, wait_until

from kiln_api.builder.v1 import builder_pb2 as pb
from kiln_api.builder.v1 import builder_pb2_grpc as pb_grpc
from kiln_api.storage.v1 import storage_pb2 as spb
from kiln_api.storage.v1 import storage_pb2_grpc as spb_grpc
from kiln_common.lifecycle import TERMINAL
from kiln_common.proc import pid_alive, stop_pid
from kiln_devstack.devservers import free_port
from kiln_devstack.stack import Stack
from kiln_devstack.stack import start_builder as stack_start_builder

pytestmark = [pytest.mark.e2e, pytest.mark.build]

ACK_WAIT = "5"  # seconds a silent worker has before its build goes to another

RECIPE = """\
name: svc
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "SCRIPT"
disk: {size: 1GiB, filesystem: FS}
outputs: [OUTPUTS]
"""


def write_recipe(where: Path, *, script: str = "echo kiln > /etc/kiln-release", fs: str = "ext4",
                 outputs: str = "qcow2", commands: str = "", checks: str = "") -> Path:  # fmt: skip
    """Images these tests build are boot-tested (the recipe's default) unless submitted
    with --no-boot-test;
    commands (a YAML list) are run in the booted guest, checks (profiles) on its tree."""
    where.mkdir(parents=True, exist_ok=True)
    text = RECIPE.replace("SCRIPT", script).replace("FS", fs).replace("OUTPUTS", outputs)
    text += f"test: {{commands: {commands}}}\n" if commands else ""
    text += f"checks: [{checks}]\n" if checks else ""
    path = where / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with kiln_up(tmp_path, KILN_BUILDER_ACK_WAIT_SECONDS=ACK_WAIT) as environ:
        yield environ


def stack_of(env: dict[str, str]) -> Stack:
    found = Stack.load(Path(env["KILN_HOME"]))
    assert found is not None
    return found


def builder(env: dict[str, str]) -> pb_grpc.BuilderStub:
    stack = stack_of(env)
    return pb_grpc.BuilderStub(stack_channel(stack.builder, stack.token()))


def artifacts_of(env: dict[str, str], build_id: str) -> list[spb.Artifact]:
    stack = stack_of(env)
    stub = spb_grpc.StorageStub(stack_channel(stack.storage, stack.token()))
    selector = {"build-id": build_id}
    return list(stub.ListArtifacts(spb.ListArtifactsRequest(label_selector=selector)).artifacts)


def ended(stub: pb_grpc.BuilderStub, build_id: str) -> pb.Build | None:
    build = stub.GetBuild(pb.GetBuildRequest(id=build_id))
    return build if build.state in TERMINAL else None


def test_kiln_build_follow_builds_and_stores_an_image(env: dict[str, str], tmp_path: Path) -> None:
    """Through the service without a boot: the README demo's test boots an image
    through it, and seed 003's vm test runs a command in the booted guest."""
    # Requirement checks ride along: the cloud profile, advisory (no cloud-init here).
    recipe = write_recipe(tmp_path / "r", checks="{profile: cloud, advisory: true}")
    done = kiln(env, "build", str(recipe), "--follow", "--no-boot-test", timeout=900)
    build_id = done.stderr.split()[1]
    assert "build succeeded" in done.stderr and "boot-test" not in done.stderr
    record = builder(env).GetBuild(pb.GetBuildRequest(id=build_id))
    assert record.state == pb.BUILD_STATE_SUCCEEDED and record.attempt == 1
    names = [s.name for s in record.steps]
    assert names[0] == "bootstrap" and names[-1] == "upload" and "boot-test" not in names
    assert names[names.index("sysprep") + 1 : names.index("sysprep") + 3] == ["checks", "disk"]
    assert record.steps[0].cached  # the shared bootstrap layer
    kinds = sorted(a.kind for a in record.artifacts)
    assert kinds == ["build-log", "checks", "image", "sbom"]
    results = {c.rule: c for c in record.checks}
    assert results["cloud.virtio"].passed and results["cloud.growable-root"].passed
    warned = results["cloud.contextualisation"]
    assert (warned.passed, warned.advisory, warned.file) == (False, True, "/usr/bin/cloud-init")
    image = next(a for a in record.artifacts if a.kind == "image")
    assert not image.url, "a record keeps no signed URL: it is a credential"
    lines = done.stdout.splitlines()
    printed = next(i for i, line in enumerate(lines) if line.startswith(image.artifact_id))
    url = lines[printed + 1].strip()  # signed for the caller as the build ended
    head = urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30)
    assert int(head.headers["Content-Length"]) == image.size
    assert {a.id for a in artifacts_of(env, build_id)} == {a.artifact_id for a in record.artifacts}

    listed = kiln(env, "build", "ls").stdout
    assert build_id in listed and "succeeded" in listed
    shown = kiln(env, "build", "show", build_id).stdout
    assert "state       succeeded" in shown and "cached" in shown
    assert "check       WARN cloud.contextualisation" in shown
    logs = kiln(env, "build", "logs", build_id).stdout
    assert "mkfs.ext4" in logs


def test_a_failing_build_exits_non_zero_with_its_step_and_log(
    env: dict[str, str], tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "r", script="echo about to fail; exit 3", outputs="tar")
    done = kiln(env, "build", str(recipe), "--follow", check=False, timeout=900)
    assert done.returncode == 1, done.stderr
    assert "build failed" in done.stderr and "error in step run" in done.stderr
    assert "about to fail" in done.stderr  # the log tail
    build_id = done.stderr.split()[1]
    record = builder(env).GetBuild(pb.GetBuildRequest(id=build_id))
    assert record.error.step == "run" and record.attempt == 1  # not retried
    assert [a.kind for a in record.artifacts] == ["build-log"]


def test_a_failed_check_fails_the_build_and_its_results_stay_in_the_record(
    env: dict[str, str], tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "r", outputs="tar", checks="tycoon")
    done = kiln(env, "build", str(recipe), "--follow", check=False, timeout=900)
    assert done.returncode == 1, done.stderr
    assert "error in step checks: step checks failed: 3 requirement checks failed: " in done.stderr
    assert "tycoon.ssh-enabled (/usr/sbin/sshd: the OpenSSH server is not installed" in done.stderr
    build_id = done.stderr.split()[1]
    record = builder(env).GetBuild(pb.GetBuildRequest(id=build_id))
    assert record.error.step == "checks" and record.attempt == 1  # not retried
    failed = [(c.rule, c.file) for c in record.checks if not c.passed]
    assert failed == [("tycoon.ext3-image", "outputs"), ("tycoon.ssh-enabled", "/usr/sbin/sshd"),
                      ("tycoon.network-config", "/etc/hosts")]  # fmt: skip
    assert len(record.checks) == 6 and [a.kind for a in record.artifacts] == ["build-log"]
    shown = kiln(env, "build", "show", build_id, check=False).stdout
    assert "check       FAIL tycoon.network-config" in shown
    assert "check       PASS tycoon.home" in shown
    as_json = json.loads(kiln(env, "build", "show", build_id, "--json", check=False).stdout)
    assert as_json["checks"][1]["rule"] == "tycoon.ssh-enabled"


def test_cancel_stops_the_running_step_and_removes_everything(
    env: dict[str, str], tmp_path: Path
) -> None:
    recipe = write_recipe(tmp_path / "r", script="echo sleeping; sleep 600")
    build_id = kiln(env, "build", str(recipe)).stdout.strip()
    stub = builder(env)

    def running_run_step() -> bool:
        steps = stub.GetBuild(pb.GetBuildRequest(id=build_id)).steps
        return any(s.name == "run" and s.state == pb.STEP_STATE_RUNNING for s in steps)

    wait_until("the run step", running_run_step, 600)
    assert "cancel requested" in kiln(env, "build", "cancel", build_id).stdout
    record = wait_until("cancelled", lambda: ended(stub, build_id), 600)
    assert record.state == pb.BUILD_STATE_CANCELLED
    assert record.cancel_requested
    assert [s.state for s in record.steps if s.name == "run"] == [pb.STEP_STATE_CANCELLED]
    assert [a.labels["kiln-kind"] for a in artifacts_of(env, build_id)] == ["build-log"]
    work = Path(env["KILN_BUILDER_WORK_ROOT"])
    assert loops_under(work) == [] and mounts_under(work) == [] and not any(work.iterdir())
    sleepers = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True)
    assert sleepers.stdout == "", "the step's processes must be gone"
    assert kiln(env, "build", "show", build_id, check=False).returncode == 3


def start_builder(env: dict[str, str], name: str, log: Path) -> tuple[int, str]:
    """Another builder, with this test's builder settings, named name."""
    address = f"127.0.0.1:{free_port()}"
    own = {k: v for k, v in env.items() if k.startswith("KILN_BUILDER_")}
    pid = stack_start_builder(stack_of(env), address, log,
                              {**own, "KILN_BUILDER_WORKER_NAME": name})  # fmt: skip
    return pid, address


def test_a_build_whose_builder_is_killed_is_finished_by_another(
    env: dict[str, str], tmp_path: Path
) -> None:
    stack = stack_of(env)
    logs = tmp_path / "logs"
    b_pid, b_address = start_builder(env, "b", logs / "b.log")
    started = [b_pid]
    try:
        # Two workers: the stack's (named host:pid) and b. xfs is filled through
        # a loop device and a mount: whichever runs the build is killed right then.
        recipe = write_recipe(tmp_path / "r", fs="xfs")
        # No boot test: the failover is the point, and a boot costs a minute.
        build_id = kiln(env, "build", str(recipe), "--no-boot-test").stdout.strip()
        work = Path(env["KILN_BUILDER_WORK_ROOT"])
        wait_until("a mount of the build", lambda: mounts_under(work), 900)
        victim = builder(env).GetBuild(pb.GetBuildRequest(id=build_id)).worker
        victim_pid = b_pid if victim == "b" else int(victim.rsplit(":", 1)[1])
        assert victim_pid in (b_pid, stack.pids["builder"])
        os.kill(victim_pid, signal.SIGKILL)
        wait_until("the killed builder to go", lambda: not pid_alive(victim_pid), 600)
        assert mounts_under(work) or loops_under(work), "the kill should have left something"

        survivor = stack.builder if victim == "b" else b_address
        api = pb_grpc.BuilderStub(stack_channel(survivor, stack.token()))
        final = wait_until("the build to end", lambda: ended(api, build_id), 900)
        assert final.state == pb.BUILD_STATE_SUCCEEDED, final.error
        # Usually attempt 2; a passing failure (retried) may add one.
        assert final.worker != victim and final.attempt >= 2
        stored = artifacts_of(env, build_id)
        kinds = sorted(a.labels["kiln-kind"] for a in stored)
        assert kinds == ["build-log", "image", "sbom"]
        assert {a.labels["kiln-attempt"] for a in stored} == {str(final.attempt)}
        assert {a.id for a in stored} == {a.artifact_id for a in final.artifacts}
        states = [u.state for u in api.WatchBuild(pb.WatchBuildRequest(id=build_id))
                  if u.WhichOneof("kind") == "state"]  # fmt: skip
        assert states[0] == pb.BUILD_STATE_QUEUED and states[-1] == pb.BUILD_STATE_SUCCEEDED
        assert states.count(pb.BUILD_STATE_RUNNING) == final.attempt

        # A builder starts again where the killed one was: its janitor reclaims
        # what the kill left behind.
        started.append(start_builder(env, "again", logs / "again.log")[0])
        assert loops_under(work) == [] and mounts_under(work) == []
        assert list(work.iterdir()) == [], "the dead attempt's workspace is removed"
        assert "janitor released" in (logs / "again.log").read_text()
    finally:
        for pid in started:
            stop_pid(pid)
