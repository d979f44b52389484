"""Logging set-up shared by every Kiln process, and the redaction every log
line, build log and error text goes through: a signed URL's signature, a token
in a query and a URL's password are credentials, not something to keep."""

from __future__ import annotations

import logging
import re
import sys

_SECRET_PARAMS = re.compile(
    r"(?i)([?&](?:signature|x-amz-signature|x-amz-credential|x-amz-security-token|sig"
    r"|token|access_token|password|secret)=)[^&\s'\"#<>:;,)]+"
)
_USERINFO = re.compile(r"(://)[^/@\s]+@")  # user:password@, or a token alone (nats://T@h)
_KILN_TOKEN = re.compile(r"\bkiln_[0-9a-z]{26}_[A-Za-z0-9_-]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",]+")


def redact(text: str) -> str:
    """text with every URL's credentials (userinfo, signature, token) and any
    bearer or Kiln token masked."""
    text = _SECRET_PARAMS.sub(r"\1***", text)
    text = _USERINFO.sub(r"\1***@", text)
    text = _BEARER.sub(r"\1***", text)
    return _KILN_TOKEN.sub("kiln_***", text)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str = "INFO", name: str = "kiln") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
