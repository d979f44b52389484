"""The domain error hierarchy every Kiln core raises.

Cores never import grpc; the one mapping to status codes lives in
kiln_common.grpc_errors. Messages here are written for the client to read.
"""


class KilnError(Exception):
    """Base of every error a core raises on purpose."""


class InvalidArgument(KilnError):
    """The request is malformed; retrying it unchanged cannot succeed."""


class NotFound(KilnError):
    """The named resource does not exist."""


class AlreadyExists(KilnError):
    """The resource to create exists already."""


class FailedPrecondition(KilnError):
    """The system is not in a state where the request can run."""


class Unavailable(KilnError):
    """A backing service (S3, NATS) cannot be reached; retrying later may work."""


class DeadlineExceeded(Unavailable):
    """A call did not finish in time; like Unavailable, retrying later may work."""


class PermissionDenied(KilnError):
    """The caller may not do this."""


class ResourceExhausted(KilnError):
    """Over a quota (the message names the limit): nothing was done."""


class Unauthenticated(KilnError):
    """The call carries no identity Kiln accepts (missing, expired, forged)."""


class Internal(KilnError):
    """A service failed unexpectedly (its message carries only a reference)."""


class DataLoss(KilnError):
    """Stored data is corrupt or was lost."""


class Cancelled(KilnError):
    """The operation was cancelled by its caller."""
