"""`kiln build`: submit a recipe to the builder and follow it, list builds,
show one, print or follow its log, cancel it.

  kiln build RECIPE [--follow]      exit 0 only when the build succeeded
  kiln build ls | show ID | logs ID [-f] | cancel ID
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from kiln_cli import exits, output, progress
from kiln_client import BuilderClient, StorageClient, wire
from kiln_common import lifecycle
from kiln_common.builds import (
    Build,
    BuildState,
    CheckResult,
    TestCommandResult,
)
from kiln_common.errors import KilnError
from kiln_common.lifecycle import STATES, TERMINAL, step_word
from kiln_common.lifecycle import word as state_word
from kiln_recipe import RecipeError
from kiln_recipe.source import RecipeSource
from kiln_recipe.submission import recipe_source

VERBS = ("ls", "show", "logs", "cancel")
URL_SECONDS = 7 * 24 * 3600  # the download URLs a finished build's outputs are printed with


class BuildUsageError(Exception):
    """Printed as it is; exit status 2."""


def add_build_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser(
        "build", help="build images: kiln build RECIPE [--follow] | ls | show | logs | cancel"
    ).add_subparsers(dest="verb", required=True)
    p = group.add_parser("submit", help="submit a recipe (the default: kiln build RECIPE)")
    p.add_argument("recipe", type=Path)
    p.add_argument("-f", "--follow", action="store_true", help="show progress until it ends")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="rebuild every layer, and use no earlier build's result",
    )
    p.add_argument("--no-boot-test", action="store_true", help="skip the boot test")
    p.add_argument("--idempotency-key", default="", help="the same key returns the same build")
    p.set_defaults(fn=cmd_submit)
    p = group.add_parser("ls", help="list builds, newest first")
    p.add_argument("--state", choices=lifecycle.WORDS)
    p.add_argument("--name", default="", help="only builds of this recipe name")
    p.add_argument("-n", "--limit", type=int, default=50)
    p.set_defaults(fn=cmd_ls)
    p = group.add_parser(
        "show", help="one build: state, steps, checks, test commands, artifacts, error"
    )
    p.add_argument("id")
    p.add_argument("--json", action="store_true", help="the whole build record as JSON")
    p.set_defaults(fn=cmd_show)
    p = group.add_parser("logs", help="a build's log")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    p.set_defaults(fn=cmd_logs)
    p = group.add_parser("cancel", help="cancel a queued or running build")
    p.add_argument("id")
    p.set_defaults(fn=cmd_cancel)


def route(argv: list[str]) -> list[str]:
    """`kiln build RECIPE ...` means `kiln build submit RECIPE ...`."""
    if len(argv) >= 2 and argv[0] == "build" and argv[1] not in (*VERBS, "submit", "-h", "--help"):
        return ["build", "submit", *argv[1:]]
    return argv


def _client() -> BuilderClient:
    return BuilderClient()


# ---- submit ------------------------------------------------------------------------------


def checked_source(path: Path) -> RecipeSource:
    """The recipe and the files it names, checked locally first (the same
    checks the builder runs): no stack is needed to see why not."""
    try:
        return recipe_source(path)[1]
    except RecipeError as exc:
        raise BuildUsageError(
            f"{path}: invalid recipe:\n" + "\n".join(i.render(str(path)) for i in exc.issues)
        ) from None


def cmd_submit(args: argparse.Namespace) -> int:
    source = checked_source(args.recipe)
    with _client() as client:
        build = client.submit(
            source,
            idempotency_key=args.idempotency_key,
            no_cache=args.no_cache,
            skip_boot_test=args.no_boot_test,
        )
        if args.json and not args.follow:
            output.emit(output.build(build))
            return 0
        if args.json:
            return _follow_json(client, build.id)
        display = progress.of(args)
        display.note(f"build {build.id} queued ({build.name} {build.version})")
        if not args.follow:
            print(build.id)
            return 0
        try:
            follow(display, client, build.id)
        except KeyboardInterrupt:
            print(f"\nkiln: stopped following; the build goes on (kiln build cancel {build.id})",
                  file=sys.stderr)  # fmt: skip
            return exits.INTERRUPTED
        final = client.get(build.id)
    print_outcome(final, download_urls(final), quiet=bool(getattr(args, "quiet", False)))
    return STATES[final.state].exit_code if final.state in STATES else 1


def _follow_json(client: BuilderClient, build_id: str) -> int:
    """`kiln build RECIPE --follow --json`: one JSON line per update (as the
    API's BuildUpdate), then one with the final record ({"build": ...})."""
    for update in client.watch(build_id):
        output.line(output.update(update))
    final = client.get(build_id)
    output.line({"build": output.build(final)})
    return STATES[final.state].exit_code if final.state in STATES else exits.FAILED


def follow(display: progress.Display, client: BuilderClient, build_id: str) -> None:
    """Shows the build's updates until it ends; the client resumes the watch
    where it broke off when the builder or NATS is away for a while."""
    with display.build() as view:
        for update in client.watch(build_id):
            view.show(update)


def download_urls(build: Build) -> dict[str, str]:
    """A download URL of each artifact, signed now for the caller (build
    records keep no URL: a signed URL is a credential); none if storage says no."""
    urls: dict[str, str] = {}
    try:
        with StorageClient() as storage:
            for a in build.artifacts:
                urls[a.artifact_id] = storage.url(a.artifact_id, URL_SECONDS)
    except KilnError:
        pass  # the ids are printed; `kiln artifact url ID` asks again
    return urls


def print_outcome(build: Build, urls: dict[str, str] | None = None, quiet: bool = False) -> None:
    """The artifacts on stdout; on stderr how the build ended and, if it
    failed, why (--quiet: only why a build that did not succeed did not)."""
    succeeded = build.state == BuildState.SUCCEEDED
    if not (quiet and succeeded):
        print(f"build {build.id} {state_word(build.state)}", file=sys.stderr)
    if build.cached_from and not quiet:
        print(f"the result of build {build.cached_from}, which had the same inputs"
              " (--no-cache builds anew)", file=sys.stderr)  # fmt: skip
    if build.error is not None:
        where = f" in step {build.error.step}" if build.error.step else ""
        print(f"error{where}: {build.error.message}", file=sys.stderr)
        for line in build.error.log_tail[-10:]:
            print(f"  | {line}", file=sys.stderr)
    for line in check_lines(
        [c for c in build.checks if not c.passed and not (quiet and succeeded)]
    ):
        print(f"check {line}", file=sys.stderr)  # the failed and warned rules; show has all
    for a in build.artifacts:
        print(f"{a.artifact_id}  {a.kind:<11} {a.name}  {a.size}  sha256:{a.sha256}")
        if (urls or {}).get(a.artifact_id):
            print(f"    {(urls or {})[a.artifact_id]}")


# ---- ls, show, logs, cancel ----------------------------------------------------------------


def _when(build: Build) -> str:
    created = build.created or datetime.fromtimestamp(0, UTC)
    return created.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _took(build: Build) -> str:
    if build.started is None:
        return "-"
    end = int(build.finished.timestamp()) if build.finished else time.time()
    seconds = end - int(build.started.timestamp())
    return f"{seconds:.0f}s"


def cmd_ls(args: argparse.Namespace) -> int:
    if args.json:
        with _client() as client:
            found = client.list(lifecycle.state_of(args.state or ""), args.name, args.limit)
            output.emit(output.builds(itertools.islice(found, max(args.limit, 0))))
        return 0
    header = f"{'ID':<26}  {'STATE':<9}  {'NAME':<24}  {'VERSION':<10}  {'CREATED':<19}  TOOK"
    if args.limit <= 0:
        print(header)
        return 0
    with _client() as client:
        found = client.list(lifecycle.state_of(args.state or ""), args.name, args.limit)
        builds = itertools.islice(found, args.limit)
        # The first row is the first call to the builder: when it fails, stdout holds
        # nothing (not a header over an error).
        first = next(builds, None)
        print(header)
        for b in itertools.chain([first] if first is not None else [], builds):
            state = state_word(b.state)
            print(f"{b.id:<26}  {state:<9}  {b.name:<24}  {b.version:<10}  {_when(b)}  {_took(b)}")
    return 0


def _ancestor(client: BuilderClient, build_id: str) -> str:
    """A base's build as `id (name version)`, or its id alone once it is gone."""
    try:
        base = client.get(build_id)
    except KilnError:
        return build_id
    return f"{build_id} ({base.name} {base.image_version or base.version})"


def cmd_show(args: argparse.Namespace) -> int:
    with _client() as client:
        b = client.get(args.id)
    code = STATES[b.state].exit_code if b.state in TERMINAL else 0
    if args.json:
        print(wire.build_json(b))
        return code
    print(
        f"id          {b.id}\nstate       {state_word(b.state)}\nrecipe      {b.name} {b.version}"
    )
    print(f"digest      {b.recipe_digest}\ncreated     {_when(b)}\ntook        {_took(b)}")
    print(f"worker      {b.worker or '-'} (attempt {b.attempt})")
    if b.image_version:
        print(f"version     {b.image_version} (build {b.build_number} of {b.name})")
    if b.revoked is not None:
        print(f"revoked     {b.revoked.astimezone(UTC):%Y-%m-%d %H:%M:%S}: {b.revoked_reason}")
    if b.cached_from:
        print(f"cached from {b.cached_from} (the same inputs: its artifacts)")
    if b.ancestry:
        with _client() as client:
            print("ancestry    " + " <- ".join(_ancestor(client, i) for i in b.ancestry))
    if b.fingerprint is not None:
        print(f"fingerprint {b.fingerprint.digest}")
        for part in b.fingerprint.parts:
            print(f"  {part.name:<10} {part.value}")
    if b.base is not None:
        print(
            f"base        {b.base.source}\n            {b.base.description}, sha256 {b.base.sha256}"
        )
    if b.isolation:
        under = f" (appliance under {b.appliance_accel})" if b.appliance_accel else ""
        why = f"; {b.isolation_reason}" if b.isolation_reason else ""
        print(f"isolation   {b.isolation}{under}{why}")
    if b.accel:
        print(f"boot test   under {b.accel}")
    for s in b.steps:
        how = step_word(s.state)
        print(
            f"step        {s.name:<10} {how:<9} {s.seconds:7.1f}s{'  cached' if s.cached else ''}"
        )
    for line in check_lines(b.checks):
        print(f"check       {line}")
    for t in b.test_commands:
        print(f"test        {test_word(t):<9} {t.seconds:7.1f}s  {t.command}")
    for a in b.artifacts:
        print(f"artifact    {a.artifact_id}  {a.kind:<11} {a.name}  {a.size}")
    if b.error is not None:
        print(f"error       {b.error.step + ': ' if b.error.step else ''}{b.error.message}")
    return code


def check_lines(results: Sequence[CheckResult]) -> list[str]:
    """Each requirement rule's result on a line: PASS, FAIL, or WARN (failed,
    in an advisory profile), the rule, the file it looked at and why."""
    lines = []
    for r in results:
        word = "PASS" if r.passed else ("WARN" if r.advisory else "FAIL")
        lines.append(f"{word} {r.rule:<30} {r.file + ': ' if r.file else ''}{r.why}")
    return lines


def test_word(result: TestCommandResult) -> str:
    """passed, timed-out, or exit N."""
    if result.passed:
        return "passed"
    return "timed-out" if result.timed_out else f"exit {result.exit_status}"


def cmd_logs(args: argparse.Namespace) -> int:
    with _client() as client:
        for update in client.watch(args.id, stored_only=not args.follow):
            if update.log is None:
                continue
            if args.json:  # one JSON line per log line: its text, level and time
                output.line({"text": update.log.text, "level": update.log.level,
                             "time": wire.timestamp_text(update.time)})  # fmt: skip
            else:
                print(update.log.text, flush=True)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        b = client.cancel(args.id)
    if args.json:
        output.emit(output.build(b))
        return 0
    done = b.state == BuildState.CANCELLED
    print(f"build {b.id} {'cancelled' if done else 'cancel requested (the worker is stopping it)'}")
    return 0
