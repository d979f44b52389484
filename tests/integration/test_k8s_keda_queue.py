"""The production overlay's KEDA triggers read the real build queue.

A real nats-server runs the dev overlay's own nats.conf (its users and their
permissions, the monitoring port, JetStream; loopback ports instead of the
pod's), the builder's queue code makes the queue as the builder user, builds
are queued for no tenant and for a tenant, and one is taken by a worker. Then
each trigger of deploy/k8s/overlays/production/builder-scaledobject.yaml is
asked what KEDA would ask, over HTTP, from the monitoring port:

- `nats-jetstream`: KEDA's scaler GETs /jsz?acc=<account>&consumers=true&config=true
  and reads its consumer's num_pending + num_ack_pending (KEDA's
  pkg/scalers/nats_jetstream_scaler.go, getMaxMsgLag); a consumer it cannot
  find makes it fall back to the stream's last sequence, so the names must
  be the ones the builder creates;
- `metrics-api`: KEDA GETs the url and reads the valueLocation (GJSON) from it.
  The path is evaluated here by a reader of the GJSON subset it uses
  (`key` and `#(key=="value")` steps), which refuses anything else.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import nats
import pytest
from k8s_support import OVERLAYS, render
from support import wait_until

from kiln_builder.service import queue
from kiln_common.nats_access import ADMIN, SERVICES
from kiln_common.proc import spawn, stop_pid
from kiln_devstack.devservers.common import find_binary, free_port, wait_http

pytestmark = pytest.mark.integration

Doc = dict[str, Any]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.fixture
def dev_nats(tmp_path: Path) -> Iterator[tuple[str, str, dict[str, str]]]:
    """The dev overlay's nats.conf on loopback: (client URL base, monitor URL, passwords)."""
    docs = render(OVERLAYS / "dev")
    data = find(docs, "ConfigMap", "nats-config")["data"]
    passwords = {u: str(find(docs, "Secret", "nats-users")["stringData"][u])
                 for u in (ADMIN, *SERVICES)}  # fmt: skip
    port = free_port()
    monitor = free_port({port})
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    for key, text in data.items():
        text = text.replace("0.0.0.0:4222", f"127.0.0.1:{port}")
        text = text.replace("0.0.0.0:8222", f"127.0.0.1:{monitor}")
        text = text.replace("/data", str(tmp_path / "data")).replace("/var/run/nats", str(tmp_path))
        (conf_dir / key).write_text(text)
    env = {"POD_NAME": "nats-0", **{f"NATS_{u.upper()}_PASSWORD": p for u, p in passwords.items()}}
    log = tmp_path / "nats.log"
    proc = spawn([find_binary("nats-server"), "-c", conf_dir / "nats.conf"], log_file=log, env=env)
    try:
        wait_http(f"http://127.0.0.1:{monitor}/healthz", proc.pid, log)
        yield f"127.0.0.1:{port}", f"127.0.0.1:{monitor}", passwords
    finally:
        stop_pid(proc.pid)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def gjson(document: Any, path: str) -> Any:
    """GJSON's `a.b` and `a.#(k=="v").b` steps, nothing more (anything else fails)."""
    steps = re.findall(r"#\([^)]*\)|[^.]+", path)
    assert ".".join(steps) == path, f"not a path this reader knows: {path}"
    value = document
    for step in steps:
        query = re.fullmatch(r'#\((\w+)=="([^"]*)"\)', step)
        if query:
            key, wanted = query.groups()
            assert isinstance(value, list), (step, value)
            value = next(item for item in value if item.get(key) == wanted)
        else:
            assert re.fullmatch(r"\w+", step), f"not a step this reader knows: {step}"
            value = value[step]
    return value


async def test_the_scaled_objects_triggers_count_queued_and_running_builds(
    dev_nats: tuple[str, str, dict[str, str]],
) -> None:
    address, monitor, passwords = dev_nats
    scaled = find(render(OVERLAYS / "production"), "ScaledObject", "builder")
    triggers = {t["type"]: t["metadata"] for t in scaled["spec"]["triggers"]}

    nc = await nats.connect(f"nats://builder:{passwords['builder']}@{address}")
    try:
        js = nc.jetstream()
        policy = queue.QueuePolicy()
        await queue.ensure(js, policy)  # what every builder pod does at start
        await queue.ensure_queue(js, policy, "acme")  # a tenant's first build
        for build in ("b1", "b2"):
            await js.publish(queue.subject(""), build.encode())
        for build in ("a1", "a2", "a3"):
            await js.publish(queue.subject("acme"), build.encode())
        # A worker takes one of acme's builds: running, not acked.
        sub = await js.pull_subscribe(
            queue.subject("acme"), durable=queue.consumer("acme"), stream=queue.STREAM
        )
        (running,) = await sub.fetch(1, timeout=5)

        def jetstream_lag() -> int:
            meta = triggers["nats-jetstream"]
            query = urlencode({"acc": meta["account"], "consumers": "true", "config": "true"})
            answer = get_json(f"http://{monitor}/jsz?{query}")
            (account,) = [a for a in answer["account_details"] if a["name"] == meta["account"]]
            (stream,) = [s for s in account["stream_detail"] if s["name"] == meta["stream"]]
            (consumer,) = [c for c in stream["consumer_detail"] if c["name"] == meta["consumer"]]
            return int(consumer["num_pending"]) + int(consumer["num_ack_pending"])

        def every_tenant() -> int:
            meta = triggers["metrics-api"]
            url = urlsplit(meta["url"])
            answer = get_json(f"http://{monitor}{url.path}?{url.query}")
            return int(gjson(answer, meta["valueLocation"]))

        # nats-jetstream sees the builds of no tenant; metrics-api every build,
        # queued or running: KEDA follows the larger (one pod per build).
        assert jetstream_lag() == 2
        assert every_tenant() == 5
        await running.ack()  # the build ended: its message leaves the work queue
        await nc.flush()
        wait_until("the acked build to leave the stream", lambda: every_tenant() == 4, 10)
        assert jetstream_lag() == 2
    finally:
        await nc.close()


def test_the_gjson_reader_refuses_what_it_does_not_know() -> None:
    document = {"a": [{"name": "x", "b": 1}]}
    assert gjson(document, 'a.#(name=="x").b') == 1
    with pytest.raises(AssertionError):
        gjson(document, "a.#.b")
