"""`kiln schedule`: recipes rebuilt on a clock, only when their inputs changed.

  kiln schedule add RECIPE (--cron EXPR [--tz ZONE] | --every DURATION) [--pause-after N]
  kiln schedule ls | show ID | rm ID | pause ID | resume ID | run ID | runs ID

Every verb takes --json: the API's record (a list for ls and runs) on stdout.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from kiln_cli.build_cmd import checked_source
from kiln_client import wire
from kiln_client.schedules import SchedulesClient
from kiln_common.schedules import Schedule, ScheduleRun

EXAMPLE = """\
example:
  kiln schedule add web.yaml --cron '0 3 * * *' --tz Europe/Amsterdam
  kiln schedule runs 01J9Z3Q8W6V0Y2N4C5B7D8E9F0"""


def add_schedule_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = sub.add_parser(
        "schedule", help="rebuild a recipe on a clock, when its inputs changed"
    ).add_subparsers(dest="verb", required=True)
    p = verbs.add_parser("add", help="a new schedule; prints its id", epilog=EXAMPLE,
                         formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("recipe", type=Path)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="5 fields (or 6, seconds first), or @daily, @hourly...")
    when.add_argument("--every", help="an interval: 30m, 12h, 1d")
    p.add_argument("--tz", default="", help="the cron's time zone (default UTC)")
    p.add_argument("--pause-after", type=_pause_after, default=0,
                   help="failed runs in a row that pause it, 1 to 100 (default 3)")  # fmt: skip
    p.set_defaults(fn=cmd_add)
    for verb, fn, what in (
        ("show", cmd_show, "one schedule"),
        ("rm", cmd_rm, "delete a schedule (its builds stay)"),
        ("pause", cmd_pause, "stop its clock"),
        ("resume", cmd_resume, "start its clock again (its failures forgotten)"),
        ("run", cmd_run, "fire it now"),
        ("runs", cmd_runs, "its runs, newest first: outcome, build, fingerprint"),
    ):
        p = verbs.add_parser(verb, help=what)
        p.add_argument("id")
        p.set_defaults(fn=fn)
    verbs.add_parser("ls", help="the schedules").set_defaults(fn=cmd_ls)
    for p in verbs.choices.values():
        p.add_argument("--json", action="store_true", help="the API's record as JSON")


def _pause_after(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a number from 1 to 100")
    return int(text)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _clock(s: Schedule) -> str:
    return (
        f"every {s.every}"
        if s.every
        else f"cron {s.cron}" + (f" ({s.time_zone})" if s.time_zone else "")
    )


def _print_schedule(s: Schedule, as_json: bool) -> None:
    if as_json:
        print(wire.message_json(wire.schedule_message(s)))
        return
    print(f"id          {s.id}\nrecipe      {s.name}\nclock       {_clock(s)}")
    why = f" ({s.paused_reason})" if s.paused_reason else ""
    print(
        f"state       {s.state}{why}\nfailures    {s.failures} in a row (pauses at {s.pause_after})"
    )
    print(f"last run    {_when(s.last_run)}\nlast build  {s.last_build or '-'}")
    print(f"inputs      {s.last_fingerprint or '-'}")


def cmd_add(args: argparse.Namespace) -> int:
    source = checked_source(args.recipe)
    with SchedulesClient() as client:
        found = client.add(source, cron=args.cron or "", time_zone=args.tz,
                           every=args.every or "", pause_after=args.pause_after)  # fmt: skip
    if args.json:
        _print_schedule(found, True)
    else:
        print(found.id)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with SchedulesClient() as client:
        found = client.list()
    if args.json:
        print(wire.schedules_json(found))
        return 0
    print(f"{'ID':<26}  {'STATE':<7}  {'RECIPE':<24}  {'LAST RUN':<19}  CLOCK")
    for s in found:
        print(f"{s.id:<26}  {s.state:<7}  {s.name:<24}  {_when(s.last_run):<19}  {_clock(s)}")
    return 0


def _one(verb: str, args: argparse.Namespace) -> int:
    with SchedulesClient() as client:
        found = getattr(client, verb)(args.id)
    _print_schedule(found, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    return _one("get", args)


def cmd_rm(args: argparse.Namespace) -> int:
    return _one("delete", args)


def cmd_pause(args: argparse.Namespace) -> int:
    return _one("pause", args)


def cmd_resume(args: argparse.Namespace) -> int:
    return _one("resume", args)


def cmd_run(args: argparse.Namespace) -> int:
    return _one("run", args)


def _run_line(r: ScheduleRun) -> str:
    source = " (by hand)" if r.manual else ""
    detail = f"  {r.error}" if r.error else ""
    return (f"{r.number:<8} {_when(r.time)}  {r.outcome:<9}  {r.build_id or '-':<26}  "
            f"{r.fingerprint or '-'}{source}{detail}")  # fmt: skip


def cmd_runs(args: argparse.Namespace) -> int:
    with SchedulesClient() as client:
        found = client.runs(args.id)
    if args.json:
        print(wire.runs_json(found))
        return 0
    print(f"{'RUN':<8} {'FIRED':<19}  {'OUTCOME':<9}  {'BUILD':<26}  FINGERPRINT")
    for r in found:
        print(_run_line(r))
    return 0
