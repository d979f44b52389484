"""docs/deploy.md's examples work: its commands make the Secrets the manifests
use, and its site kustomization renders on top of the production overlay.

Every shell block of the guide that creates a Secret runs in bash, as written,
with `kubectl` standing for the pinned kubectl run offline: `create secret`
with `--dry-run=client -o yaml` (nothing reaches a cluster), `apply -f -` keeping
what it is given (the real `kiln market key create -o yaml` prints the endorsers'
Secret), anything else (exec, rollout, apply of files) doing nothing. The
Secrets printed must be exactly the ones the manifests name, in their
namespaces, with their keys (test_k8s_manifests.OPERATOR_SECRETS).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from k8s_support import KUBECTL, render
from support import REPO
from test_k8s_manifests import OPERATOR_SECRETS, PRODUCTION, Tree, doc_id, pod_settings

from kiln_builder.service.settings import BuilderSettings
from kiln_common.nats_access import SERVICES
from kiln_common.proc import run_sync
from kiln_publisher.settings import PublisherSettings
from kiln_storage.settings import StorageSettings

DOC = REPO / "docs/deploy.md"
# kubectl for the guide's blocks: Secrets go to $OUT, nothing reaches a cluster.
KUBECTL_STAND_IN = r"""
kubectl() {
  case " $* " in
    *" create secret "*) "$KUBECTL" "$@" --dry-run=client -o yaml >>"$OUT"; echo --- >>"$OUT" ;;
    *" apply -f - "*) cat >>"$OUT"; echo --- >>"$OUT" ;;
    *) ;;
  esac
}
"""


def secret_blocks() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)
    return [b for b in blocks if "create secret" in b]


def test_the_guides_secret_commands_make_the_secrets_the_manifests_use(tmp_path: Path) -> None:
    blocks = secret_blocks()
    assert len(blocks) >= 3  # the passwords and keys, TLS, the service token
    for name in ("clouds.yaml", "tls.crt", "tls.key", "ca.crt"):  # the files they read
        (tmp_path / name).write_text(f"{name} of the operator\n")
    out = tmp_path / "secrets.yaml"
    script = tmp_path / "guide.sh"
    script.write_text("set -euo pipefail\n" + KUBECTL_STAND_IN + "\n".join(blocks))
    venv_bin = Path(sys.executable).parent
    run_sync(
        ["bash", script],
        cwd=tmp_path,
        env={
            "KUBECTL": str(KUBECTL),
            "OUT": str(out),
            "KUBECONFIG": "/dev/null",
            "KILN_HOME": str(tmp_path / "kiln-home"),
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
        },
        timeout=120,
    )
    made: dict[tuple[str, str], set[str]] = {}
    for doc in yaml.safe_load_all(out.read_text()):
        if not doc:
            continue
        assert doc["kind"] == "Secret"
        key = (doc["metadata"]["namespace"], doc["metadata"]["name"])
        made.setdefault(key, set()).update({**doc.get("data", {}), **doc.get("stringData", {})})
    assert made == OPERATOR_SECRETS


def test_the_guides_site_kustomization_renders_on_top_of_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `my-site/kustomization.yaml` of the guide, beside a clone of Kiln,
    renders with the real kustomize; its images and settings reach the pods."""
    (site,) = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
               if "overlays/production" in b]  # fmt: skip
    (tmp_path / "kiln").symlink_to(REPO)
    (tmp_path / "my-site").mkdir()
    (tmp_path / "my-site/kustomization.yaml").write_text(site)
    tree = Tree("my-site", render(tmp_path / "my-site"))
    production = {doc_id(d) for d in PRODUCTION.docs}
    assert {doc_id(d) for d in tree.docs} == production
    for service in SERVICES:
        (workload,) = [w for w in tree.workloads() if w["metadata"]["name"] == service]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"].startswith(f"registry.example.org/kiln/{service}:")
    storage = pod_settings(monkeypatch, tree, "storage", StorageSettings, "KILN_STORAGE_")
    assert (storage.s3_endpoint, storage.s3_secure) == ("s3.example.org:443", True)
    builder = pod_settings(monkeypatch, tree, "builder", BuilderSettings, "KILN_BUILDER_")
    assert builder.cluster_networks is not None and builder.force_vm
    publisher = pod_settings(monkeypatch, tree, "publisher", PublisherSettings, "KILN_PUBLISHER_")
    assert publisher.public_url == "https://market.example.org"
