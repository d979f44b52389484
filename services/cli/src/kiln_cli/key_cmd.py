"""`kiln market key`: the endorser keys the publisher signs marketplace entries
with, in the keyring it reads (kiln_market.keys: Ed25519 JWKs in JSON files).

  kiln market key create EMAIL [--keyring FILE|DIR] [-o yaml]
  kiln market key ls [--keyring FILE|DIR]
  kiln market key revoke KID [--keyring FILE|DIR]

The keyring is the local stack's (KILN_HOME/publisher/keyring, which `kiln up`'s
publisher reloads) unless --keyring names another. `create -o yaml` writes
nothing: it prints the Secret (publisher-endorsers) holding a new key, for
`kubectl apply -f -`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from joserfc.jwk import OKPKey

from kiln_cli import output
from kiln_common.errors import InvalidArgument, NotFound
from kiln_market import Keyring, generate_endorser, keyring_files, write_keyring
from kiln_market.keys import CURVE, EndorserKey, endorser_file

SECRET = "publisher-endorsers"  # mounted by deploy/k8s/base/publisher/deployment.yaml
EXAMPLE = """\
example:
  kiln market key create ops@example.org
  kiln market key create ops@example.org -o yaml | kubectl -n kiln apply -f -
  kiln market key revoke 0Hs1_6Hh5L3…"""


def add_key_parsers(market: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    verbs = market.add_parser(
        "key", help="endorser keys: create | ls | revoke", epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="key_verb", required=True)  # fmt: skip
    p = verbs.add_parser("create", help="a new signing key for an endorser")
    p.add_argument("email")
    p.add_argument("-o", "--output", choices=("yaml",), default=None,
                   help="print a Kubernetes Secret holding the key; write nothing")  # fmt: skip
    p.add_argument("--rotate", action="store_true",
                   help="a new key even if the endorser has one (the old one still verifies"
                        " until revoked)")  # fmt: skip
    p.set_defaults(fn=cmd_create)
    p = verbs.add_parser("ls", help="the keyring's keys: kid, endorser, signing or not, revoked")
    p.set_defaults(fn=cmd_ls)
    p = verbs.add_parser("revoke", help="revoke a key: entries it signed stop verifying")
    p.add_argument("kid")
    p.set_defaults(fn=cmd_revoke)
    for parser in verbs.choices.values():
        parser.add_argument("--keyring", type=Path, default=None, metavar="FILE|DIR",
                            help="the keyring (default: the local stack's)")  # fmt: skip


def _path(args: argparse.Namespace) -> Path:
    from kiln_cli.publish_cmd import default_keyring

    return args.keyring or default_keyring()


def _check_email(email: str) -> str:
    if "@" not in email or any(c.isspace() for c in email) or len(email) > 254:
        raise InvalidArgument(f"{email[:80]!r} is not an endorser's e-mail address")
    return email


def cmd_create(args: argparse.Namespace) -> int:
    email = _check_email(args.email)
    if args.output == "yaml":
        if args.json:
            raise InvalidArgument("-o yaml prints a Secret: it takes no --json")
        if args.keyring is None:
            # Applied, it replaces the Secret's keyring.json: say what is kept.
            print("kiln: the Secret holds only the new key (replacing keyring.json, so"
                  " give --keyring with the keys to keep)", file=sys.stderr)  # fmt: skip
        print(yaml.dump(_secret(email, args.keyring), Dumper=_Blocks, sort_keys=False), end="")
        return 0
    path = _path(args)
    if not path.exists() and path.suffix != ".json":
        path.mkdir(parents=True)  # a keyring directory, as the publisher's
    made = _rotate(path, email) if args.rotate else generate_endorser(path, email)
    if args.json:
        output.emit({"kid": made.kid, "email": made.email, "keyring": str(path)})
    else:
        print(f"key {made.kid} signs for {made.email} (keyring {path})")
    return 0


class _Blocks(yaml.SafeDumper):
    """Multi-line strings (the keyring file) as literal blocks, readable in a Secret."""


_Blocks.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def _rotate(path: Path, email: str) -> EndorserKey:
    """A new signing key for email, beside its others, in the keyring file
    (a directory: the endorser's own file in it)."""
    if path.is_dir():
        path = endorser_file(path, email)
    ring = Keyring.load(path) if path.exists() else Keyring()
    made = ring.add(email, OKPKey.generate_key(CURVE))
    write_keyring(path, ring, private=True)
    return made


def _secret(email: str, keyring: Path | None) -> dict[str, Any]:
    """The publisher-endorsers Secret: the given keyring's keys (if any) and a
    new signing key for email, private, under keyring.json."""
    ring = Keyring.load(keyring) if keyring is not None and keyring.exists() else Keyring()
    ring.add(email, OKPKey.generate_key(CURVE))
    document = json.dumps(ring.to_document(private=True), indent=2) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET,
            "namespace": "kiln",
            "labels": {"app.kubernetes.io/name": "publisher", "app.kubernetes.io/part-of": "kiln"},
        },
        "type": "Opaque",
        "stringData": {"keyring.json": document},
    }


def cmd_ls(args: argparse.Namespace) -> int:
    path = _path(args)
    ring = Keyring.load(path) if path.exists() else Keyring()
    rows = [
        {"kid": k.kid, "email": k.email, "signing": k.key.is_private,
         "revoked": ring.is_revoked(k.email, k.kid)}
        for k in sorted(ring.keys.values(), key=lambda k: (k.email, k.kid))
    ]  # fmt: skip
    if args.json:
        output.emit(rows)
        return 0
    for row in rows:
        state = "revoked" if row["revoked"] else ("signs" if row["signing"] else "verifies")
        print(f"{row['kid']}  {row['email']:<32} {state}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """Adds the key to the revoked list of the keyring file that holds it."""
    path = _path(args)
    for file in keyring_files(path) if path.exists() else []:
        ring = Keyring.load(file)
        if args.kid in ring.keys:
            ring.revoke_key(args.kid)
            private = any(k.key.is_private for k in ring.keys.values())
            write_keyring(file, ring, private=private)
            if args.json:
                output.emit({"kid": args.kid, "revoked": True, "keyring": str(file)})
            else:
                print(f"revoked key {args.kid} ({ring.keys[args.kid].email}) in {file}")
            return 0
    raise NotFound(f"no key {args.kid} in the keyring {path}")
