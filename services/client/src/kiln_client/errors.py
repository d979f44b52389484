"""Failures found by the client itself (a bad local file, a corrupt
download); failures of a call are kiln_common.errors, mapped from their status."""

from kiln_common.errors import KilnError


class ClientError(KilnError):
    """A local failure, printed as it is."""


class UploadStopped(ClientError):
    """push() was asked to stop; the upload was aborted, nothing is stored."""
