"""`kiln publish` and `kiln market`: images to Glance and the marketplace.

  kiln publish ARTIFACT|BUILD [--glance CLOUD]... [--name N] [--visibility private]
                              [--marketplace --endorser EMAIL]
  kiln market search [TEXT] [--os debian] [--status valid]
  kiln market show ID | verify ID [--endorser EMAIL]
                     | verify --file ENTRY.json [--newest NEWER.json]
  kiln market deprecate ID

Every verb takes --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from kiln_cli import exits
from kiln_cli.key_cmd import add_key_parsers
from kiln_client import PublisherClient, wire
from kiln_client.discovery import NotRunning
from kiln_common import publications as api
from kiln_common.errors import NotFound, Unavailable
from kiln_common.home import kiln_home
from kiln_common.publications import PublicationState
from kiln_common.retry import RetryPolicy
from kiln_market import Entry, Keyring, Rejected, verify

VISIBILITIES = ("private", "shared", "community", "public")


class PublishUsageError(Exception):
    """Printed as it is; exit status 2."""


def default_keyring() -> Path:
    """The keyring `kiln up`'s publisher trusts (KILN_HOME/publisher/keyring)."""
    return kiln_home() / "publisher" / "keyring"


def add_publish_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "publish", help="publish an artifact or a build's images to Glance and the marketplace"
    )
    p.add_argument("subject", metavar="ARTIFACT|BUILD")
    p.add_argument("--glance", action="append", default=[], metavar="CLOUD",
                   help="a cloud of the publisher's clouds.yaml (repeatable)")  # fmt: skip
    p.add_argument("--region", default="", help="the clouds' region (default: each cloud's)")
    p.add_argument("--name", default="", help="the Glance image name (default: NAME-VERSION)")
    p.add_argument("--visibility", default="private", choices=VISIBILITIES)
    p.add_argument("--marketplace", action="store_true", help="publish a signed entry")
    p.add_argument("--endorser", default="", metavar="EMAIL",
                   help="who signs the entry (default: the publisher's endorser)")  # fmt: skip
    p.add_argument("--title", default="")
    p.add_argument("--description", default="")
    p.add_argument("--json", action="store_true", help="the publication as JSON")
    p.set_defaults(fn=cmd_publish)

    market = subparsers.add_parser(
        "market", help="the marketplace: search | show | verify | deprecate"
    ).add_subparsers(dest="verb", required=True)
    m = market.add_parser("search", help="entries, newest first")
    m.add_argument("text", nargs="?", default="")
    m.add_argument("--os", default="")
    m.add_argument("--os-version", default="")
    m.add_argument("--arch", default="")
    m.add_argument("--endorser", default="")
    m.add_argument("--status", default="", choices=("", "valid", "expired", "deprecated"))
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_search)
    m = market.add_parser("show", help="one entry")
    m.add_argument("identifier")
    m.add_argument("--json", action="store_true", help="the signed entry document")
    m.set_defaults(fn=cmd_show)
    m = market.add_parser("verify", help="check an entry's signature against the keyring")
    m.add_argument("identifier", nargs="?", default="")
    m.add_argument("--file", type=Path,
                   help="a signed entry document (checked against the publisher's newest "
                        "statement when it is reachable)")  # fmt: skip
    m.add_argument("--endorser", default="", metavar="EMAIL",
                   help="with IDENTIFIER: check this endorser's entry (default: the newest "
                        "statement about the image by any endorser)")  # fmt: skip
    m.add_argument("--newest", type=Path, metavar="FILE",
                   help="with --file: the newest statement known for the same image and "
                        "endorser; checks fully offline")  # fmt: skip
    m.add_argument("--keyring", type=Path, action="append",
                   help="keyring file or directory (default: the local stack's)")  # fmt: skip
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_verify)
    add_key_parsers(market)
    m = market.add_parser("deprecate", help="re-sign an entry as deprecated")
    m.add_argument("identifier")
    m.add_argument("--endorser", default="")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_deprecate)


def _word(state: PublicationState) -> str:
    return state.name.lower()


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    print()


# ---- publish ---------------------------------------------------------------------------


def request_from(args: argparse.Namespace, as_build: bool) -> api.PublishRequest:
    if not args.glance and not args.marketplace:
        raise PublishUsageError("kiln publish: give --glance CLOUD and/or --marketplace")
    if args.endorser and not args.marketplace:
        raise PublishUsageError("kiln publish: --endorser goes with --marketplace")
    targets = tuple(
        api.GlanceTarget(cloud=c, region=args.region, name=args.name, visibility=args.visibility)
        for c in args.glance
    )
    market = (
        api.MarketplaceTarget(
            endorser=args.endorser, title=args.title, description=args.description
        )
        if args.marketplace
        else None
    )
    which = {"build_id" if as_build else "artifact_id": args.subject}
    return api.PublishRequest(glance=targets, marketplace=market, **which)


def cmd_publish(args: argparse.Namespace) -> int:
    request = request_from(args, as_build=False)
    with PublisherClient() as client:
        try:
            publication = client.publish(request)
        except NotFound:
            # Not an artifact: a build, whose image artifacts are published.
            publication = client.publish(request_from(args, as_build=True))
    if args.json:
        _print_json(wire.publication_json(publication))
    else:
        print(f"publication {publication.id}: {_word(publication.state)}")
        for r in publication.results:
            print("  " + result_line(r))
    return 0 if publication.state == PublicationState.DONE else 1


def result_line(r: api.TargetResult) -> str:
    state = _word(r.state)
    if r.state == PublicationState.FAILED:
        return f"{r.kind} {r.target}: failed: {r.error}"
    if r.kind == "glance":
        retired = f", retired {', '.join(r.retired)}" if r.retired else ""
        return (
            f"glance {r.target}: {state} image {r.image_id} {r.image_name!r} ({r.method}){retired}"
        )
    return f"marketplace {r.target}: {state} entry {r.entry_identifier}"


# ---- market ----------------------------------------------------------------------------


def entry_line(e: api.Entry) -> str:
    os_ = " ".join(x for x in (e.os, e.os_version, e.arch) if x)
    return f"{e.identifier}  {e.status:<10}  {os_:<20}  {e.endorser}  {e.title}"


def cmd_search(args: argparse.Namespace) -> int:
    with PublisherClient() as client:
        entries = client.search(
            text=args.text,
            os=args.os,
            os_version=args.os_version,
            arch=args.arch,
            endorser=args.endorser,
            status=args.status,
        )
    if args.json:
        _print_json([json.loads(e.document) for e in entries])
    else:
        for e in entries:
            print(entry_line(e))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with PublisherClient() as client:
        e = client.entry(args.identifier)
    if args.json:
        sys.stdout.write(e.document.decode())
        return 0
    print(f"identifier   {e.identifier}\nstatus       {e.status}\nendorser     {e.endorser}")
    print(f"os           {e.os} {e.os_version} {e.arch}\ntitle        {e.title}")
    print(f"format       {e.format}\nsize         {e.size}\nsha512       {e.sha512}")
    print(f"created      {wire.timestamp_text(e.created)}")
    print(f"valid until  {wire.timestamp_text(e.valid_until)}")
    print(f"artifact     {e.artifact_id}")
    for url in e.locations:
        print(f"location     {url}")
    return 0


def _keyring(args: argparse.Namespace) -> Keyring:
    paths = args.keyring or [default_keyring()]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise PublishUsageError(
            f"kiln market verify: no keyring at {missing[0]} (give --keyring FILE|DIR)"
        )
    return Keyring.load(*paths)


# Looks up the publisher's current document for an entry's image and endorser
# (None: it holds none); raises Unavailable or NotRunning when unreachable.
Fetch = Callable[[Entry], bytes | None]
_UNCHECKED = "checked the signature, endorser and revocation only, not whether a newer statement"


def newest_for(
    entry: Entry, keys: Keyring, newest_document: bytes | None, fetch: Fetch
) -> tuple[Entry | None, str]:
    """The newest statement to hold entry against, and a note for stderr
    ('' when there is nothing to say). A --newest document wins and is
    verified like the entry; else the publisher's current one, trusted only
    if it verifies (a forged "newer" one must not reject a good entry)."""
    if newest_document is not None:
        newest = verify(newest_document, keys)
        if (newest.identifier, newest.endorser.email.lower()) != (
            entry.identifier,
            entry.endorser.email.lower(),
        ):
            raise PublishUsageError(
                f"kiln market verify: --newest is about {newest.identifier} by "
                f"{newest.endorser.email}, not {entry.identifier} by {entry.endorser.email}"
            )
        return newest, ""
    try:
        document = fetch(entry)
    except (Unavailable, NotRunning) as exc:
        return None, (
            f"the publisher is unreachable ({exc}): {_UNCHECKED} supersedes it "
            "(give --newest FILE to check against one)"
        )
    if document is None:
        return None, (
            f"the publisher holds no entry {entry.identifier} by {entry.endorser.email}: "
            f"{_UNCHECKED} exists elsewhere"
        )
    try:
        return verify(document, keys), ""
    except Rejected as exc:
        return None, f"the publisher's current entry is not trusted ({exc}): {_UNCHECKED} exists"


def fetch_current(entry: Entry) -> bytes | None:
    """The publisher's current document for entry's image by entry's endorser."""
    quick = RetryPolicy(attempts=2, deadline=10.0)  # offline is an answer, not a wait
    with PublisherClient(policy=quick) as client:
        found = client.search(text=entry.identifier, endorser=entry.endorser.email)
    return next((e.document for e in found if e.identifier == entry.identifier), None)


# The publisher's current document for an image (identifier, endorser): the
# endorser's, or with endorser "" the newest statement by any endorser.
Lookup = Callable[[str, str], bytes]


def lookup_current(identifier: str, endorser: str) -> bytes:
    with PublisherClient() as client:
        if not endorser:
            return client.entry(identifier).document
        found = client.search(text=identifier, endorser=endorser)
    for e in found:
        if e.identifier == identifier:
            return e.document
    raise NotFound(f"no marketplace entry {identifier} endorsed by {endorser}")


def cmd_verify(
    args: argparse.Namespace, fetch: Fetch = fetch_current, lookup: Lookup = lookup_current
) -> int:
    try:
        return _verify(args, fetch, lookup)
    except Rejected as exc:
        if not args.json:
            raise
        # A rejection is the verification's answer: on stdout, like a pass.
        _print_json({"valid": False, "reason": exc.reason, "message": str(exc)})
        return exits.FAILED


def _verify(args: argparse.Namespace, fetch: Fetch, lookup: Lookup) -> int:
    if bool(args.file) == bool(args.identifier):
        raise PublishUsageError("kiln market verify: give an IDENTIFIER or --file ENTRY.json")
    if args.newest and not args.file:
        raise PublishUsageError("kiln market verify: --newest goes with --file")
    if args.endorser and args.file:
        # The file names its endorser; its newest is looked up for that one.
        raise PublishUsageError("kiln market verify: --endorser goes with IDENTIFIER")
    keys = _keyring(args)
    if args.file:
        document = _read(args.file)
        entry = verify(document, keys)
        newer = _read(args.newest) if args.newest else None
        newest, note = newest_for(entry, keys, newer, fetch)
        if note:
            print(f"kiln market verify: {note}", file=sys.stderr)
        entry = verify(document, keys, newest=newest)
    else:
        entry = verify(lookup(args.identifier, args.endorser), keys)
        if args.endorser and entry.endorser.email.lower() != args.endorser.lower():
            # Whatever the publisher answered, a pass is about the endorser asked for.
            raise NotFound(f"no marketplace entry {args.identifier} endorsed by {args.endorser}")
    if args.json:
        _print_json({"valid": True, "identifier": entry.identifier,
                     "endorser": entry.endorser.email, "status": entry.status()})  # fmt: skip
    else:
        print(f"{entry.identifier}: signature good, endorsed by {entry.endorser.email} "
              f"({entry.status()})")  # fmt: skip
    return 0


def _read(path: Path) -> bytes:
    """A document the command line names: one it cannot read is bad input (2)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PublishUsageError(f"kiln market verify: {path}: {exc.strerror}") from None


def cmd_deprecate(args: argparse.Namespace) -> int:
    with PublisherClient() as client:
        e = client.deprecate(args.identifier, args.endorser)
    if args.json:
        sys.stdout.write(e.document.decode())
    else:
        print(f"{e.identifier}: {e.status}")
    return 0
