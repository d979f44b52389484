"""python -m kiln_publisher (or kiln-publisher): runs the publisher until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from kiln_common.errors import KilnError
from kiln_common.grpc_server import serve_until_signalled
from kiln_common.logs import setup_logging
from kiln_publisher.app import build
from kiln_publisher.settings import PublisherSettings

log = logging.getLogger("kiln_publisher")


async def _run(settings: PublisherSettings) -> None:
    app = await build(settings)
    await serve_until_signalled(app.grpc, settings.shutdown_grace, on_stop=app._cleanups[::-1])


def main() -> int:
    try:
        settings = PublisherSettings()
    except ValidationError as exc:
        print(f"kiln-publisher: bad settings:\n{exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, "kiln-publisher")
    log.info("settings: %s", settings.public())
    try:
        asyncio.run(_run(settings))
    except KilnError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
