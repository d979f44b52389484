"""`kiln config`: the configuration in effect and where each value comes from
(a flag, a KILN_* variable, the configuration file's context, the local
`kiln up` stack), and switching contexts (kiln_client.config).

  kiln config show [--json]
  kiln config use-context NAME
"""

from __future__ import annotations

import argparse
import os

from kiln_cli import output
from kiln_client import config
from kiln_common.home import Stack, kiln_home

SHOWN = ("storage", "builder", "publisher", "token", "ca_file", "output")


def add_config_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = sub.add_parser("config", help="the configuration in effect; contexts").add_subparsers(
        dest="verb", required=True
    )
    verbs.add_parser("show", help="each setting, its value and where it comes from").set_defaults(
        fn=cmd_show
    )
    p = verbs.add_parser("use-context", help="make a context of the configuration file current")
    p.add_argument("name")
    p.set_defaults(fn=cmd_use)


def effective() -> list[dict[str, str]]:
    """Each setting as the clients will find it: value (a token masked) and source."""
    ctx = config.current()
    stack = Stack.load(kiln_home())
    rows = []
    for key in SHOWN:
        value, source = "", "default"
        variable = config.ENV.get(key, "")
        if variable and os.environ.get(variable):
            value, source = os.environ[variable], f"env {variable}"
        elif key == "token" and (ctx.get("token") or ctx.get("token_file")):
            value = "set"
            source = f"{ctx.source} context {ctx.name}" + (
                f" (token_file {ctx.get('token_file')})" if ctx.get("token_file") else ""
            )
        elif ctx.get(key):
            value, source = ctx.get(key), f"{ctx.source} context {ctx.name}"
        elif stack is not None and key in ("storage", "builder", "publisher"):
            value, source = str(getattr(stack, key)), f"the `kiln up` stack ({stack.home})"
        elif stack is not None and key == "ca_file" and stack.tls_ca:
            value, source = str(stack.tls_ca), f"the `kiln up` stack ({stack.home})"
        elif key == "token" and (kiln_home() / "token").is_file():
            value, source = "set", f"the `kiln up` stack ({kiln_home() / 'token'})"
        if key == "token" and value and value != "set":
            value = "set"  # never the secret itself
        rows.append({"setting": key, "value": value, "source": source})
    return rows


def cmd_show(args: argparse.Namespace) -> int:
    ctx = config.current()
    rows = effective()
    if args.json:
        output.emit({"file": str(config.path()), "context": ctx.name, "settings": rows})
        return 0
    exists = "" if config.path().is_file() else " (none)"
    print(f"file     {config.path()}{exists}\ncontext  {ctx.name or '-'}")
    for row in rows:
        print(f"{row['setting']:<9} {row['value'] or '-':<40} {row['source']}")
    return 0


def cmd_use(args: argparse.Namespace) -> int:
    written = config.use(args.name)
    if args.json:
        output.emit({"context": args.name, "file": str(written)})
    else:
        print(f"context {args.name} is current ({written})")
    return 0
