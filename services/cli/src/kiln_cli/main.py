"""kiln: the thin command-line client. Every failure is one readable line
(never a traceback) and a non-zero exit."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from kiln_cli import exits, output, progress
from kiln_cli.build_cmd import BuildUsageError, add_build_parser, route
from kiln_cli.channel_cmd import add_channel_parsers
from kiln_cli.config_cmd import add_config_parsers
from kiln_cli.examples import add_examples
from kiln_cli.publish_cmd import PublishUsageError, add_publish_parsers
from kiln_cli.recipe_cmd import add_recipe_parser
from kiln_cli.schedule_cmd import add_schedule_parsers
from kiln_cli.token_cmd import add_token_parsers
from kiln_cli.usage import KilnParser, UsageError, parse_duration, positive_int
from kiln_client import ClientError, StorageClient, config, wire
from kiln_client.discovery import NotRunning
from kiln_common.digests import file_sha256
from kiln_common.errors import KilnError
from kiln_common.grpc_errors import code_name
from kiln_common.proc import ProcessError
from kiln_common.settings import public_value
from kiln_devstack import stack
from kiln_devstack.devservers import ServerError


def parse_labels(values: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _client(args: argparse.Namespace) -> StorageClient:
    return StorageClient(state_dir=stack.kiln_home() / "state")


def cmd_up(args: argparse.Namespace) -> int:
    s = stack.up(stack.kiln_home(), tls=args.tls)
    if args.json:
        output.emit({
            "home": str(s.home), "storage": s.storage, "storage_http": s.storage_http,
            "builder": s.builder, "publisher": s.publisher, "publisher_http": s.publisher_http,
            "nats": public_value(s.nats_url), "tls_ca": str(s.tls_ca or ""),
        })  # fmt: skip
        return 0
    print(f"kiln is up (state in {s.home})")
    print(f"  storage  {s.storage}  downloads {s.storage_http}")
    print(f"  builder  {s.builder}")
    print(f"  publisher {s.publisher}  marketplace {s.publisher_http}/")
    print(f"  nats     {public_value(s.nats_url)}")
    if s.tls_ca:
        print(f"  tls      clients trust {s.tls_ca}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    stopped = stack.down(stack.kiln_home())
    if args.json:
        output.emit({"stopped": stopped})
        return 0
    print("kiln is down" if stopped else "kiln was not running")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    labels = parse_labels(args.label)
    labels.setdefault("name", path.name)
    sha256 = "" if args.no_verify else file_sha256(path)
    shown = progress.of(args).transfer(f"push {path.name}", path.stat().st_size)
    with _client(args) as client, shown as moved:
        artifact = client.push(
            path, labels, sha256=sha256, progress=moved, part_size=args.part_size << 20
        )
    if args.json:
        output.emit(output.artifact(artifact))
        return 0
    print(artifact.id)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        rows = list(client.list(parse_labels(args.label)))
    if args.json:
        output.emit([output.artifact(a) for a in rows])
        return 0
    for a in rows:
        stored = a.created_at or datetime.fromtimestamp(0, UTC)
        created = stored.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        labels = ",".join(f"{k}={v}" for k, v in sorted(a.labels.items()))
        print(f"{a.id}  {a.size:>12}  {created}  {a.checksums.sha256[:16]}  {labels}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        a = client.stat(args.id)
    if args.json:
        output.emit(output.artifact(a))
        return 0
    created = wire.timestamp_text(a.created_at)
    print(f"id        {a.id}\nsize      {a.size}\ncreated   {created}")
    for alg in ("sha256", "sha512", "sha1", "md5"):
        print(f"{alg:<9} {getattr(a.checksums, alg)}")
    for k, v in sorted(a.labels.items()):
        print(f"label     {k}={v}")
    return 0


def cmd_url(args: argparse.Namespace) -> int:
    seconds = parse_duration(args.expires)
    if seconds < 1:  # 0 would be the service's default lifetime, not the one printed
        raise UsageError(f"--expires {args.expires}: a URL lives at least 1s")
    with _client(args) as client:
        url = client.url(args.id, seconds)
    if args.json:
        output.emit({"artifact_id": args.id, "url": url, "expires_seconds": seconds})
        return 0
    print(url)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        size = client.stat(args.id).size
        with progress.of(args).transfer(f"get {Path(args.output).name}", size) as moved:
            got = client.get(args.id, Path(args.output), progress=moved)
    if args.json:
        output.emit({"artifact": output.artifact(got), "path": str(Path(args.output))})
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    deleted = []
    with _client(args) as client:
        for artifact_id in args.id:
            client.delete(artifact_id)
            deleted.append(artifact_id)
            if not args.json:
                print(f"deleted {artifact_id}")
    if args.json:
        output.emit({"deleted": deleted})
    return 0


def _version() -> str:
    """The installed kiln-cli package's version."""
    try:
        return importlib.metadata.version("kiln-cli")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = KilnParser(
        prog="kiln",
        description="Kiln: build, store and publish VM images. Results go to stdout;"
        " progress (a bar on a terminal, plain lines otherwise) and notes to stderr.",
    )
    parser.add_argument("--version", action="version", version=f"kiln {_version()}")
    parser.add_argument("--context", default="",
                        help="a context of the configuration file (kiln config show)")  # fmt: skip
    for option, what in (("--storage", "storage"), ("--builder", "builder"),
                         ("--publisher", "publisher")):  # fmt: skip
        parser.add_argument(option, default="", metavar="HOST:PORT",
                            help=f"the {what} service (over KILN_{what.upper()})")  # fmt: skip
    parser.add_argument("--token", default="", help="the bearer token (over KILN_TOKEN)")
    parser.add_argument("--ca-file", default="", metavar="PEM",
                        help="the CA the services' TLS chains to (over KILN_CA_FILE)")  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Kiln on loopback; returns when healthy")
    up.add_argument(
        "--tls", action="store_true", help="serve gRPC and HTTP over TLS (a local CA's certificate)"
    )
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop what `kiln up` started").set_defaults(fn=cmd_down)

    art = sub.add_parser("artifact", help="stored artifacts").add_subparsers(
        dest="verb", required=True
    )
    p = art.add_parser(
        "push", help="upload a file, with its progress on stderr; prints the artifact id"
    )
    p.add_argument("file")
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p.add_argument("--part-size", type=positive_int, default=16, metavar="MiB")
    p.add_argument(
        "--no-verify", action="store_true", help="do not declare the file's SHA-256 first"
    )
    p.set_defaults(fn=cmd_push)
    p = art.add_parser("ls", help="list artifacts")
    p.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="only those with this label"
    )
    p.set_defaults(fn=cmd_ls)
    p = art.add_parser("show", help="one artifact's size, checksums and labels")
    p.add_argument("id")
    p.set_defaults(fn=cmd_show)
    p = art.add_parser("url", help="print an expiring HTTP download URL")
    p.add_argument("id")
    p.add_argument("--expires", default="1h", help="lifetime, e.g. 15m, 1h, 7d")
    p.set_defaults(fn=cmd_url)
    p = art.add_parser(
        "get", help="download, with its progress on stderr (resumes a partial download)"
    )
    p.add_argument("id")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(fn=cmd_get)
    p = art.add_parser("rm", help="delete artifacts")
    p.add_argument("id", nargs="+")
    p.set_defaults(fn=cmd_rm)
    add_recipe_parser(sub)
    add_build_parser(sub)
    add_publish_parsers(sub)
    add_schedule_parsers(sub)
    add_channel_parsers(sub)
    add_token_parsers(sub)
    add_config_parsers(sub)
    completion = sub.add_parser("completion", help="a shell completion script: bash or zsh")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(fn=cmd_completion)
    _every_verb_takes_json(parser)
    _every_verb_takes_quiet(parser)
    add_examples(parser)
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    """Prints the completion script shtab makes from this very parser."""
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _every_verb_takes_json(parser: argparse.ArgumentParser) -> None:
    """--json on each verb that has not its own (the record as JSON on stdout,
    errors as one JSON object on stderr: docs/cli.md)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if parser.get_default("fn") is cmd_completion:
            return  # a shell script, not a record
        if not any("--json" in a.option_strings for a in parser._actions):
            parser.add_argument("--json", action="store_true", help="the result as JSON")
        return
    for verb in subs[0].choices.values():
        _every_verb_takes_json(verb)


QUIET_HELP = "no progress and no notes on stderr: only the result and errors"


def _every_verb_takes_quiet(parser: argparse.ArgumentParser) -> None:
    """-q/--quiet after the verb too. Its default is to set nothing, so the
    verb's parser keeps a --quiet given before the command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for verb in subs[0].choices.values() if subs else ():
        _every_verb_takes_quiet(verb)
    if not subs and parser.get_default("fn") is not cmd_completion:
        parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                            help=QUIET_HELP)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`kiln build show ID | head`): end quietly, as
        # Unix tools do. stdout goes to /dev/null so the flush at exit does
        # not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exits.BROKEN_PIPE


# Options before the command, for every verb; each sets its KILN_* variable
# for this process, so it overrides the variable and the configuration file.
GLOBAL_OPTIONS = {
    "--context": "KILN_CONTEXT",
    "--storage": "KILN_STORAGE",
    "--builder": "KILN_BUILDER",
    "--publisher": "KILN_PUBLISHER",
    "--token": "KILN_TOKEN",
    "--ca-file": "KILN_CA_FILE",
}
GLOBAL_FLAGS = ("-q", "--quiet")  # before the command, taking no value


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.WARNING, format="kiln: %(message)s")
    words = sys.argv[1:] if argv is None else argv
    head, rest = _global_options(words)
    try:
        args = build_parser().parse_args([*head, *route(rest)])
    except UsageError as exc:  # before the options are read: --json as typed
        return _failed("--json" in words, "INVALID_ARGUMENT", exits.BAD_INPUT, str(exc))
    for option, variable in GLOBAL_OPTIONS.items():
        given = getattr(args, option.removeprefix("--").replace("-", "_"))
        if given:
            os.environ[variable] = given
    config.enable()  # the configuration file is the command's, not the services'
    try:
        if hasattr(args, "json") and not args.json and config.value("output") == "json":
            args.json = True  # the context's default output
    except KilnError as exc:
        return _failed(False, code_name(exc), exits.for_error(exc), str(exc))
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.fn(args))
    except BrokenPipeError:
        raise  # main() ends it quietly: not an OSError to report
    except (ClientError, NotRunning) as exc:
        # No stack running (and no address given): the services are unavailable.
        code = "UNAVAILABLE" if isinstance(exc, NotRunning) else code_name(exc)
        return _failed(as_json, code, exits.for_error(exc), str(exc))
    except KilnError as exc:  # a service's answer: its status and message
        code = code_name(exc)
        return _failed(as_json, code, exits.for_error(exc), str(exc), with_code=True)
    except (UsageError, BuildUsageError, PublishUsageError) as exc:
        return _failed(as_json, "INVALID_ARGUMENT", exits.BAD_INPUT, str(exc))
    except (ServerError, ProcessError, OSError) as exc:
        return _failed(as_json, "FAILED", exits.FAILED, str(exc))
    except KeyboardInterrupt:
        return _failed(as_json, "INTERRUPTED", exits.INTERRUPTED, "interrupted")


def _global_options(words: list[str]) -> tuple[list[str], list[str]]:
    """The leading global options (with their values), and the command after them."""
    at = 0
    while at < len(words):
        word = words[at]
        if word in GLOBAL_FLAGS:
            at += 1
        elif word.split("=", 1)[0] in GLOBAL_OPTIONS:
            at += 1 if "=" in word else 2
        else:
            break
    return words[:at], words[at:]


def _failed(as_json: bool, code: str, exit_code: int, message: str, with_code: bool = False) -> int:
    """Says why the command failed, as one line `kiln: [CODE: ]message` (or
    one JSON object with --json) on stderr; its exit code."""
    if as_json:
        output.error(code, exit_code, message)
    else:
        print(f"kiln: {code}: {message}" if with_code else f"kiln: {message}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
