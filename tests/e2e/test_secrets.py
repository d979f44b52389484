"""No secret is left behind: a real `kiln up` stack runs a build that
succeeds, one that fails, a marketplace publication and a download URL
signed for its caller; a service is started with a bad secret setting and a
NATS URL with a password, and fails. Then everything Kiln wrote is searched
for the stack's secrets (its tokens, NATS passwords, URL signing key, the
URL's signature, the failed start's values): every log, every message of
every NATS stream (records, events, updates, publications, entries), the
build logs stored as artifacts, the failed start's output."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import nats
import pytest
from support import kiln, kiln_up

from kiln_client import StorageClient
from kiln_common.home import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.build]

RECIPE = """\
name: secrets
version: "1.0"
from:
  bootstrap: {distro: debian, release: bookworm}
run:
  - inline: "SCRIPT"
outputs: [tar]
"""
BAD_KEY = "kiln-test-short-secret-17"  # too short for a signing key: the start fails


def stack_secrets(home: Path) -> dict[str, bytes]:
    """What the stack holds secret, in each form it could leak in."""
    found: dict[str, bytes] = {}
    for name in ("token", "service-token"):
        token = (home / name).read_text().strip()
        found[name] = token.encode()
        # kiln_<id>_<secret>: the secret is URL-safe base64 and may hold "_" itself
        # (splitting at the last one took a fragment that any log could contain).
        found[f"{name}'s secret part"] = token.split("_", 2)[2].encode()
    for user, password in json.loads((home / "nats-users.json").read_text()).items():
        found[f"NATS password of {user}"] = password.encode()
    key = (home / "storage" / ".url-signing-key").read_bytes()
    found["URL signing key (hex)"] = key.hex().encode()
    found["URL signing key (base64)"] = base64.b64encode(key).rstrip(b"=")
    return found


async def every_stream_message(url: str) -> bytes:
    """Each message (headers and data) of each stream: records, events,
    updates, publications, entries, the queue."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        out = []
        for info in await js.streams_info():
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(info.config.name, seq)
                except Exception:  # noqa: BLE001 - deleted messages leave gaps
                    continue
                out.append(json.dumps(msg.headers or {}).encode() + (msg.data or b""))
        return b"\n".join(out)
    finally:
        await nc.close()


def failed_start(home: Path, nats_password: str) -> str:
    """A storage service given a bad signing key and a NATS URL with a password."""
    env = {
        "PATH": "/usr/bin:/bin",
        "KILN_STORAGE_URL_SIGNING_KEY": BAD_KEY,
        "KILN_STORAGE_NATS_URL": f"nats://storage:{nats_password}@127.0.0.1:9",
        "KILN_STORAGE_FS_ROOT": str(home / "failed-start"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "kiln_storage"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0, "the bad key must stop it"
    return done.stdout + done.stderr


def test_no_secret_is_left_in_logs_records_events_artifacts_or_errors(tmp_path: Path) -> None:
    with kiln_up(tmp_path) as env:
        home = Path(env["KILN_HOME"])
        (tmp_path / "ok").mkdir()
        (tmp_path / "bad").mkdir()
        good = tmp_path / "ok" / "recipe.yaml"
        good.write_text(RECIPE.replace("SCRIPT", "echo kiln > /etc/kiln-release"))
        bad = tmp_path / "bad" / "recipe.yaml"
        bad.write_text(RECIPE.replace("SCRIPT", "echo failing on purpose; exit 3"))
        built = kiln(env, "build", str(good), "--follow", "--no-boot-test", timeout=900)
        failed = kiln(env, "build", str(bad), "--follow", "--no-boot-test", check=False,
                      timeout=900)  # fmt: skip
        assert failed.returncode == 1
        build_id = built.stderr.split()[1]
        published = json.loads(kiln(env, "publish", build_id, "--marketplace", "--json").stdout)
        assert published["state"] == "STATE_DONE", published
        image = built.stdout.split()[0]
        url = kiln(env, "artifact", "url", image).stdout.strip()
        secrets = stack_secrets(home)
        secrets["a URL's signature"] = parse_qs(urlsplit(url).query)["signature"][0].encode()
        secrets["the bad signing key"] = BAD_KEY.encode()
        nats_password = json.loads((home / "nats-users.json").read_text())["storage"]
        stack = Stack.load(home)
        assert stack is not None
        left = {
            **{f"log {p.name}": p.read_bytes() for p in (home / "logs").glob("*.log")},
            "NATS streams": asyncio.run(every_stream_message(stack.nats_url)),
            "the failed start's output": failed_start(home, nats_password).encode(),
            "the failed build's output": (failed.stdout + failed.stderr).encode(),
        }
        with StorageClient(stack.storage) as storage:
            for artifact in storage.list():
                if artifact.labels.get("kiln-kind") == "build-log":
                    copy = tmp_path / f"{artifact.id}.log"
                    storage.get(artifact.id, copy, via_url=False)
                    left[f"build log {artifact.id}"] = copy.read_bytes()
    assert sum(1 for name in left if name.startswith("build log")) == 2
    assert len(left["NATS streams"]) > 10_000, "the records, events and updates were read"
    leaks = [
        (secret, where)
        for secret, value in secrets.items()
        for where, content in left.items()
        if value in content
    ]
    print(f"{len(secrets)} secrets searched for in {len(left)} places "
          f"({sum(len(c) for c in left.values())} bytes)")  # fmt: skip
    assert not leaks, leaks
