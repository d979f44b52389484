"""What `--json` prints: the API's records as JSON on stdout (field names as
the protos name them), one document per command, or one JSON line per event
for a followed build; and errors as one JSON object on stderr. docs/cli.md
describes each verb's shape."""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from kiln_client import wire
from kiln_common.artifacts import Artifact
from kiln_common.builds import Build, BuildUpdate


def emit(data: Any) -> None:
    """One JSON document on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    print()


def line(data: Any) -> None:
    """One JSON line on stdout, flushed (a follower reads it as it comes)."""
    print(json.dumps(data, sort_keys=True, separators=(",", ":")), flush=True)


def record(msg: Message) -> dict[str, Any]:
    return dict(json_format.MessageToDict(msg, preserving_proto_field_name=True))


def artifact(a: Artifact) -> dict[str, Any]:
    return record(wire.artifact_message(a))


def build(b: Build) -> dict[str, Any]:
    return record(wire.build_message(b))


def builds(found: Iterable[Build]) -> list[dict[str, Any]]:
    return [build(b) for b in found]


def update(u: BuildUpdate) -> dict[str, Any]:
    return record(wire.update_message(u))


def plain(obj: Any) -> Any:
    """A dataclass (a token record, an identity) as JSON values: times in
    RFC 3339, enums by their value."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [plain(o) for o in obj]
    return obj


def error(code: str, exit_code: int, message: str) -> None:
    """An error as one JSON object on stderr (stdout stays for results)."""
    body = {"error": {"code": code, "exit": exit_code, "message": message}}
    print(json.dumps(body, sort_keys=True), file=sys.stderr)
