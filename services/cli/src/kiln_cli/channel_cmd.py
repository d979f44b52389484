"""`kiln channel`: the channels of a recipe name: latest (moves by itself),
candidate, stable or any other name (moves when asked), and revocation.

  kiln channel ls NAME
  kiln channel set NAME CHANNEL BUILD|VERSION
  kiln channel history NAME CHANNEL
  kiln channel policy NAME CHANNEL (--requires OTHER --for DURATION | --none)
  kiln channel revoke NAME VERSION [--descendants] [--reason TEXT]

Every verb takes --json: the API's record (a list for ls) on stdout.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from kiln_cli.usage import UsageError
from kiln_client import wire
from kiln_client.channels import ChannelsClient
from kiln_common.channels import Channel, ChannelRequirement
from kiln_common.durations import describe, parse_seconds
from kiln_common.errors import KilnError

EXAMPLE = """\
example:
  kiln channel policy web stable --requires candidate --for 24h
  kiln channel set web candidate 1.0-7
  kiln channel set web stable 1.0-7      # refused until it sat in candidate for 24h
  kiln channel revoke web 1.0-7 --descendants"""


def add_channel_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = sub.add_parser(
        "channel", help="versions of a recipe in named channels: latest, candidate, stable...",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="verb", required=True)  # fmt: skip
    p = verbs.add_parser("ls", help="a recipe name's channels")
    p.add_argument("name")
    p.set_defaults(fn=cmd_ls)
    p = verbs.add_parser("set", help="point a channel at a build (by id or version)")
    p.add_argument("name")
    p.add_argument("channel")
    p.add_argument("target", metavar="BUILD|VERSION")
    p.set_defaults(fn=cmd_set)
    p = verbs.add_parser("history", help="a channel's moves, oldest first")
    p.add_argument("name")
    p.add_argument("channel")
    p.set_defaults(fn=cmd_history)
    p = verbs.add_parser("policy", help="what a build needs before it enters a channel")
    p.add_argument("name")
    p.add_argument("channel")
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--requires", metavar="OTHER", help="it must have sat in OTHER first")
    rule.add_argument("--none", action="store_true", help="it requires nothing")
    p.add_argument("--for", dest="for_", type=_seconds, default=None,
                   help="how long in OTHER: 30m, 24h, 7d")  # fmt: skip
    p.set_defaults(fn=cmd_policy)
    p = verbs.add_parser("revoke", help="a version leaves every channel; its images are hidden")
    p.add_argument("name")
    p.add_argument("version", metavar="VERSION|BUILD")
    p.add_argument("--descendants", action="store_true",
                   help="also every build made from it, at any depth")  # fmt: skip
    p.add_argument("--reason", default="", help="kept in each revoked record")
    p.set_defaults(fn=cmd_revoke)
    for p in verbs.choices.values():
        p.add_argument("--json", action="store_true", help="the API's record as JSON")


def _seconds(text: str) -> int:
    try:
        return parse_seconds(text)
    except KilnError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _rule(c: Channel) -> str:
    need = c.requires
    return f"after {describe(need.seconds)} in {need.channel}" if need else "-"


def _print_channel(c: Channel, as_json: bool) -> None:
    if as_json:
        print(wire.message_json(wire.channel_message(c)))
        return
    print(f"{c.name}/{c.channel}: {c.version or '-'} (build {c.build_id or '-'}) "
          f"since {_when(c.since)}; requires {_rule(c)}")  # fmt: skip


def cmd_ls(args: argparse.Namespace) -> int:
    with ChannelsClient() as client:
        found = client.list(args.name)
    if args.json:
        print(wire.channels_json(found))
        return 0
    print(f"{'CHANNEL':<12}  {'VERSION':<14}  {'BUILD':<26}  {'SINCE':<19}  REQUIRES")
    for c in found:
        print(f"{c.channel:<12}  {c.version or '-':<14}  {c.build_id or '-':<26}  "
              f"{_when(c.since):<19}  {_rule(c)}")  # fmt: skip
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    with ChannelsClient() as client:
        _print_channel(client.set(args.name, args.channel, args.target), args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    with ChannelsClient() as client:
        found = client.get(args.name, args.channel)
    if args.json:
        _print_channel(found, True)
        return 0
    print(f"{'WHEN':<19}  {'ACTION':<8}  {'VERSION':<14}  {'BUILD':<26}  BY")
    for m in found.history:
        print(f"{_when(m.time):<19}  {m.action:<8}  {m.version or '-':<14}  "
              f"{m.build_id or '-':<26}  {m.by}")  # fmt: skip
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    requires = None
    if args.requires:
        if args.for_ is None:
            raise UsageError("--requires needs --for: how long a build must sit there"
                             " (0s: only that it was there)")  # fmt: skip
        requires = ChannelRequirement(args.requires, args.for_)
    with ChannelsClient() as client:
        _print_channel(client.policy_set(args.name, args.channel, requires), args.json)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    with ChannelsClient() as client:
        done = client.revoke(args.name, args.version, descendants=args.descendants,
                             reason=args.reason)  # fmt: skip
    if args.json:
        moved = [json.loads(wire.message_json(wire.channel_message(c))) for c in done.channels]
        print(json.dumps({"builds": done.builds, "channels": moved}, indent=2))
        return 0
    print(f"revoked {len(done.builds)} build(s): {' '.join(done.builds) or '-'}")
    for c in done.channels:
        print(f"  {c.name}/{c.channel} now {c.version or 'empty'} (build {c.build_id or '-'})")
    return 0
