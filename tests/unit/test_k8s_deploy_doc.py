"""docs/deploy.md's commands make the Secrets the manifests use.

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

import yaml
from k8s_support import KUBECTL
from support import REPO
from test_k8s_manifests import OPERATOR_SECRETS

from kiln_common.proc import run_sync

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
