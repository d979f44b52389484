"""What the CLI's verbs share of their arguments: the usage error (exit 2),
the parser that raises it instead of printing and exiting, and durations
such as 90s, 15m, 1h or 30d."""

from __future__ import annotations

import argparse
from typing import NoReturn

from kiln_common.durations import parse_seconds
from kiln_common.errors import InvalidArgument


class UsageError(Exception):
    """Printed as it is; exit status 2."""


class KilnParser(argparse.ArgumentParser):
    """argparse's parser, but a refused command line raises UsageError: the
    command reports it as it reports every error (one line, or one JSON object
    with --json), where argparse would print its usage text and exit. Its
    subparsers are of this class too (add_subparsers makes its own type's)."""

    def error(self, message: str) -> NoReturn:
        verb = self.prog.removeprefix("kiln").strip()
        where = f"{verb}: " if verb else ""
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """An argparse type: a whole number from 1 up."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number from 1 up")
    return int(text)


def parse_duration(text: str) -> int:
    """Seconds."""
    try:
        return parse_seconds(text)
    except InvalidArgument as exc:
        raise UsageError(str(exc)) from None
