"""`kiln token` and `kiln whoami`: static tokens for automation (an admin's),
and who the caller's token says it is.

  kiln token create --tenant NAME --role ROLE [--expires 30d] [--description TEXT]
  kiln token ls [--tenant NAME]
  kiln token revoke ID
  kiln whoami
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from kiln_cli import output, progress
from kiln_cli.usage import parse_duration
from kiln_client.tokens import TokensClient
from kiln_common.auth import Role
from kiln_common.auth.static import TokenRecord, expires_text

ROLES = [r.value for r in Role if r is not Role.SERVICE]


def add_token_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tokens = sub.add_parser("token", help="static tokens (admin)").add_subparsers(
        dest="verb", required=True
    )
    p = tokens.add_parser("create", help="a new token; prints it once, on stdout")
    p.add_argument("--tenant", required=True)
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--expires", default="", help="lifetime, e.g. 30d (default: never)")
    p.add_argument("--description", default="")
    p.set_defaults(fn=cmd_create)
    p = tokens.add_parser("ls", help="the tokens (never their secrets)")
    p.add_argument("--tenant", default="")
    p.set_defaults(fn=cmd_ls)
    p = tokens.add_parser("revoke", help="revoke a token (it stops at once)")
    p.add_argument("id")
    p.set_defaults(fn=cmd_revoke)
    sub.add_parser("whoami", help="the identity your token gives").set_defaults(fn=cmd_whoami)


def _record(record: TokenRecord) -> dict[str, Any]:
    """A token's record as JSON, without the digest of its secret."""
    shown: dict[str, Any] = output.plain(record)
    shown.pop("sha256", None)
    return shown


def cmd_create(args: argparse.Namespace) -> int:
    expires = timedelta(seconds=parse_duration(args.expires)) if args.expires else None
    with TokensClient() as client:
        bearer, record = client.create(args.tenant, args.role, expires, args.description)
    if args.json:  # the secret, once, with its record
        output.emit({"token": bearer, "record": _record(record)})
        return 0
    shown = f"token {record.id}: {record.role} of {record.tenant}, expires {expires_text(record)}"
    progress.of(args).note(shown)
    print(bearer)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with TokensClient() as client:
        found = client.list(args.tenant)
    if args.json:
        output.emit([_record(r) for r in found])
        return 0
    for r in found:
        state = "revoked" if r.revoked_at is not None else f"expires {expires_text(r)}"
        print(f"{r.id}  {r.tenant:<20} {r.role:<9}  {state}  {r.description}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with TokensClient() as client:
        record = client.revoke(args.id)
    if args.json:
        output.emit(_record(record))
        return 0
    print(f"revoked {record.id} ({record.role} of {record.tenant})")
    return 0


def cmd_whoami(args: argparse.Namespace) -> int:
    with TokensClient() as client:
        who = client.whoami()
    if args.json:
        output.emit(output.plain(who))
        return 0
    print(f"{who.subject}: {who.role} of tenant {who.tenant} ({who.via} token)")
    return 0
