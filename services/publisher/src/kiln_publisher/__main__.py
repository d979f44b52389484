"""python -m kiln_publisher (or kiln-publisher): runs the publisher until SIGTERM."""

from __future__ import annotations

import sys

from kiln_common.grpc_server import service_main
from kiln_publisher.app import build
from kiln_publisher.settings import PublisherSettings


def main() -> int:
    return service_main("kiln-publisher", PublisherSettings, build)


if __name__ == "__main__":
    sys.exit(main())
