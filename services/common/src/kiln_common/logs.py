"""Logging set-up shared by every Kiln process."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", name: str = "kiln") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
