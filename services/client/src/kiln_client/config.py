"""The client's configuration file: named contexts, each the addresses of a
Kiln (storage, builder, publisher), its token and TLS CA, and output
defaults, so one person can work with several Kilns:

    # ~/.config/kiln/config.yaml (or $KILN_CONFIG)
    current-context: prod
    contexts:
      prod:
        storage: storage.kiln.example.org:50051
        builder: builder.kiln.example.org:50052
        publisher: publisher.kiln.example.org:50053
        token_file: ~/.config/kiln/prod.token      # or token: kiln_...
        ca_file: ~/.config/kiln/prod-ca.pem
        output: json                               # --json by default
      local: {}                                    # the `kiln up` stack

Every value is the fallback of its KILN_* variable (KILN_STORAGE, KILN_BUILDER,
KILN_PUBLISHER, KILN_TOKEN, KILN_CA_FILE), which overrides it; KILN_CONTEXT
(or the CLI's --context) picks a context other than current-context. Where
neither says, a local `kiln up` stack answers, as before; but while a context
is current, the stack's token and CA are never sent anywhere (a context's
remote address must not get the local admin token).

Only the `kiln` command reads the file (it calls enable()): the services
use kiln_client too, and a person's file must not change where a service
connects or which token it sends."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln_common.errors import InvalidArgument

KEYS = ("storage", "builder", "publisher", "token", "token_file", "ca_file", "output")
ENV = {
    "storage": "KILN_STORAGE",
    "builder": "KILN_BUILDER",
    "publisher": "KILN_PUBLISHER",
    "token": "KILN_TOKEN",
    "ca_file": "KILN_CA_FILE",
}


_enabled = False


def enable() -> None:
    """The `kiln` command's opt-in: from now on this process reads the file."""
    global _enabled
    _enabled = True


def path() -> Path:
    named = os.environ.get("KILN_CONFIG", "").strip()
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "kiln" / "config.yaml"


@dataclass(frozen=True)
class Context:
    name: str = ""  # "" when there is no file or no context
    values: tuple[tuple[str, str], ...] = ()
    source: str = ""  # the file, for `kiln config show`

    def get(self, key: str) -> str:
        return dict(self.values).get(key, "")


def read() -> dict[str, Any]:
    """The file's document ({} when there is none, or the process did not enable it)."""
    file = path()
    if not _enabled or not file.is_file():
        return {}
    try:
        document = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise InvalidArgument(f"{file}: cannot read the kiln configuration: {exc}") from None
    except yaml.YAMLError as exc:
        # Where, not what: the line may hold a token.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidArgument(f"{file}: not valid YAML{at}") from None
    contexts = document.get("contexts", {}) if isinstance(document, dict) else None
    if not isinstance(contexts, dict) or not all(
        isinstance(body, dict) or body is None for body in contexts.values()
    ):
        raise InvalidArgument(
            f"{file}: expected `contexts:`, a mapping of names to mappings, at the top"
        )
    return document


def current() -> Context:
    """The context in effect: KILN_CONTEXT's, else the file's current-context."""
    document = read()
    named = os.environ.get("KILN_CONTEXT", "").strip()
    if not document:
        if named and _enabled:  # a context asked for by name: never the local stack instead
            raise InvalidArgument(f"{path()}: no context {named!r} (no configuration there)")
        return Context()
    contexts: dict[str, Any] = document.get("contexts") or {}
    name = named or str(document.get("current-context") or "")
    if not name:
        return Context(source=str(path()))
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise InvalidArgument(f"{path()}: no context {name!r} (contexts: {known})")
    body = contexts[name] or {}
    unknown = set(body) - set(KEYS)
    if unknown:
        raise InvalidArgument(f"{path()}: context {name}: unknown keys {sorted(unknown)}")
    values = tuple((k, str(v)) for k, v in body.items() if v not in (None, ""))
    return Context(name, values, str(path()))


def value(key: str) -> str:
    """The context's value for key ("" when it sets none): files named in it
    (token_file, ca_file) with ~ expanded; token_file read."""
    ctx = current()
    if key == "token" and not ctx.get("token") and ctx.get("token_file"):
        file = Path(ctx.get("token_file")).expanduser()
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise InvalidArgument(f"context {ctx.name}: token_file: {exc}") from None
    found = ctx.get(key)
    return str(Path(found).expanduser()) if key == "ca_file" and found else found


def use(name: str) -> Path:
    """Makes name the file's current-context; the file it wrote."""
    document = read()
    contexts = document.get("contexts") or {}
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise InvalidArgument(f"no context {name!r} in {path()} (contexts: {known})")
    document["current-context"] = name
    # Through a symlink to the real file, keeping its mode (it may hold tokens).
    file = path().resolve()
    mode = file.stat().st_mode & 0o777
    temporary = file.with_name(f".{file.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), mode)
        out.write(yaml.safe_dump(document, sort_keys=False))
    os.replace(temporary, file)
    return file
