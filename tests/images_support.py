"""Kiln's service images for the tests that run them (testcontainers, podman kube play).

`ensure_images()` runs scripts/build-images.sh, the same script `make images` runs:
podman's layer cache makes a run with nothing changed take seconds, and a clean
machine builds the base and the three images once (minutes). The images carry the
package version as their tag, so every test runs what this tree would ship.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from support import REPO

from kiln_common.proc import run_sync

SERVICES = ("storage", "builder", "publisher")
# Written by build-images.sh where podman's own configuration cannot start a
# container here (crun, or rlimits conmon refuses); every podman call must use it.
CONTAINERS_CONF = REPO / ".cache/images/containers.conf"
BUILD_TIMEOUT = 40 * 60  # a clean machine: the base, apt installs and pip installs
# pytest-timeout's limit for a test that may be the first to ask for the images
# (the build runs in its fixture, which the limit covers): the build and the test.
TEST_TIMEOUT = BUILD_TIMEOUT + 10 * 60


def version(service: str) -> str:
    for line in (REPO / f"services/{service}/pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise LookupError(f"no version in services/{service}/pyproject.toml")


def image(service: str) -> str:
    """The local tag build-images.sh gives the service's image."""
    return f"localhost/kiln/{service}:{version(service)}"


def podman_env() -> dict[str, str]:
    """The environment every podman command of a test needs (besides the scrubbed one)."""
    return {"CONTAINERS_CONF": str(CONTAINERS_CONF)} if CONTAINERS_CONF.is_file() else {}


@functools.cache
def ensure_images() -> dict[str, str]:
    """Builds (or finds in podman's layer cache) the three images once per test run;
    returns each service's image tag."""
    # The CA pip in the build needs behind a TLS-inspecting proxy: build-images.sh
    # reads PIP_CERT (else pip's own configuration, which a scrubbed environment
    # may not reach), and run_sync scrubs the environment.
    cert = {"PIP_CERT": os.environ["PIP_CERT"]} if os.environ.get("PIP_CERT") else {}
    run_sync(
        [str(REPO / "scripts/build-images.sh"), *SERVICES],
        cwd=Path(REPO),
        timeout=BUILD_TIMEOUT,
        env={**podman_env(), **cert},
    )
    return {service: image(service) for service in SERVICES}
