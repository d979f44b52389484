"""TLS on Kiln's servers: a service given a certificate and key
(`tls_cert_file`, `tls_key_file`) serves gRPC and HTTP over TLS only. Its
clients verify it against a CA (kiln_client.credentials: `tls_ca_file`,
KILN_CA_FILE, or a TLS `kiln up` stack's CA); a certificate from another CA is
refused in the handshake, before any call."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from kiln_common.errors import InvalidArgument


@dataclass(frozen=True)
class ServerTls:
    cert: Path  # PEM, the chain the server presents
    key: Path  # PEM, its private key

    @classmethod
    def of(cls, cert: Path | None, key: Path | None) -> ServerTls | None:
        """From a service's settings: both, or neither (no TLS)."""
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise InvalidArgument("tls_cert_file and tls_key_file: give both, or neither")
        return cls(cert, key)

    def grpc(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key.read_bytes(), self.cert.read_bytes())])

    def http(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        return context


def client_context(ca: Path) -> ssl.SSLContext:
    """An HTTPS client context that trusts ca only (and checks the host name)."""
    return ssl.create_default_context(cafile=str(ca))
