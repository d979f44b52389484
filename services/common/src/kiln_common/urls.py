"""URLs that come from outside (a recipe's mirror or base image, a setting),
checked for their syntax before anything uses them: what passes can reach a
command line, an apt sources line or QEMU's option syntax and mean nothing more
than a host, a port and a path."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
DEFAULT_PORTS = {"http": 80, "https": 443}


def valid_host(host: str) -> bool:
    """A DNS name of letters, digits and hyphens in dot-separated labels, or an
    IP address: no comma, space, colon or quote that a command line or an
    option string would read as something else."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    labels = host.removesuffix(".").split(".")
    return 0 < len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def http_target(url: str) -> Target:
    """An http(s) URL's scheme, host and port. ValueError, saying why, for
    whitespace or control characters anywhere, credentials (user:pass@), a bad
    port or a host that is not a plain DNS name or IP address."""
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise ValueError("it has whitespace or control characters")
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError("it is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError("credentials in a URL are not accepted")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("its port is not a number from 1 to 65535") from None
    host = parts.hostname or ""
    if not valid_host(host):
        raise ValueError(f"{host[:100]!r} is not a valid host name")
    return Target(parts.scheme, host, port)
