"""python -m kiln_storage (or kiln-storage): runs the storage service until SIGTERM."""

from __future__ import annotations

import sys

from kiln_common.grpc_server import service_main
from kiln_storage.app import build
from kiln_storage.settings import StorageSettings


def main() -> int:
    return service_main("kiln-storage", StorageSettings, build)


if __name__ == "__main__":
    sys.exit(main())
