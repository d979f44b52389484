"""An HTTP server in a network namespace the test makes itself, reached over
a veth pair: how a test serves something a build's sandbox must reach. The
sandbox's slirp4netns cannot reach the builder's loopback (by design), and
its firewall refuses the node's own addresses; an address in another
namespace is neither, as an internal apt repository on the network is not.
Nothing leaves this machine: the namespace has no other link."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PORT = 8080


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def served_from_namespace(root: Path, subnet: int = 231) -> Iterator[str]:
    """Serves root over HTTP from a namespace of its own; yields the URL. The
    server, the namespace and the veth pair are removed on every path."""
    tag = f"{os.getpid() % 10000}"
    ns, host_end, ns_end = f"kiln-t{tag}", f"kh{tag}", f"kn{tag}"
    host_ip, ns_ip = f"10.{subnet}.{os.getpid() % 250}.1", f"10.{subnet}.{os.getpid() % 250}.2"
    server: subprocess.Popen[bytes] | None = None
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _ip("link", "set", ns_end, "netns", ns)
        _ip("address", "add", f"{host_ip}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", ns, "address", "add", f"{ns_ip}/30", "dev", ns_end)
        _ip("-n", ns, "link", "set", ns_end, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind", ns_ip,
             "--directory", str(root), str(PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://{ns_ip}:{PORT}"
        _wait_for(url)
        yield url
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        subprocess.run(["ip", "link", "delete", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def _wait_for(url: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    while True:
        try:
            opener.open(url + "/", timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
