"""Makes a static token straight in NATS: the first admin token and the
service token of a deployment, before any token exists to call the Tokens
API with. Run where the NATS URL is (a Kiln pod):

  python -m kiln_common.auth.issue --tenant ops --role admin [--expires 30d]
  python -m kiln_common.auth.issue --tenant kiln --role service

The bearer token is printed once, on stdout; NATS keeps only its hash. The
NATS URL: --nats-url, else the first of KILN_NATS_URL and the services'
KILN_<SERVICE>_NATS_URL that is set."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import timedelta

import nats

from kiln_common.auth.identity import Role
from kiln_common.auth.static import StaticTokens
from kiln_common.durations import parse_seconds
from kiln_common.errors import KilnError
from kiln_common.logs import redact

URL_VARIABLES = (
    "KILN_NATS_URL", "KILN_STORAGE_NATS_URL", "KILN_BUILDER_NATS_URL", "KILN_PUBLISHER_NATS_URL",
)  # fmt: skip


async def issue(url: str, tenant: str, role: Role, expires: str) -> str:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        lifetime = timedelta(seconds=parse_seconds(expires)) if expires else None
        bearer, record = await StaticTokens(nc.jetstream()).issue(
            tenant, role, lifetime, description="kiln_common.auth.issue"
        )
        print(f"token {record.id}: {record.role} of {record.tenant}", file=sys.stderr)
        return bearer
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_common.auth.issue")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--role", required=True, choices=[r.value for r in Role])
    parser.add_argument("--expires", default="", help="e.g. 30d; default: never")
    parser.add_argument("--nats-url", default="")
    args = parser.parse_args(argv)
    url = args.nats_url or next((os.environ[v] for v in URL_VARIABLES if os.environ.get(v)), "")
    if not url:
        print("issue: no NATS URL (--nats-url, or KILN_NATS_URL)", file=sys.stderr)
        return 2
    try:
        print(asyncio.run(issue(url, args.tenant, Role(args.role), args.expires)))
    except (KilnError, OSError, nats.errors.Error) as exc:
        print(f"issue: {redact(str(exc)) or type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
