"""The kiln command's exit codes: one table for every verb (docs/cli.md), so
a script can tell a missing build from an unreachable service from a refusal
without reading the message."""

from __future__ import annotations

from kiln_client.discovery import NotRunning
from kiln_common.errors import (
    Cancelled,
    InvalidArgument,
    KilnError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

OK = 0
FAILED = 1  # the work failed (a build, a check, a verification), or an error not below
BAD_INPUT = 2  # the command line or a file it names is wrong
CANCELLED = 3  # a build was cancelled
NOT_FOUND = 4  # no such build, artifact, schedule, channel, entry...
UNAVAILABLE = 5  # a service is not running or cannot be reached (after retries)
DENIED = 6  # unauthenticated, or the role or tenant may not do it
INTERRUPTED = 130  # Ctrl-C
BROKEN_PIPE = 141  # what a shell reports for a tool that SIGPIPE ended (128 + 13)

# The first entry the error is an instance of decides (NotRunning before its
# base, FailedPrecondition, which is FAILED).
_BY_ERROR: tuple[tuple[type[KilnError] | tuple[type[KilnError], ...], int], ...] = (
    (NotRunning, UNAVAILABLE),
    (InvalidArgument, BAD_INPUT),
    (NotFound, NOT_FOUND),
    (Unavailable, UNAVAILABLE),
    ((Unauthenticated, PermissionDenied), DENIED),
    (Cancelled, CANCELLED),
)


def for_error(exc: KilnError) -> int:
    """The exit code of a command that ended with exc."""
    return next((code for kinds, code in _BY_ERROR if isinstance(exc, kinds)), FAILED)
