#!/usr/bin/env python3
"""Rewrites the `authorization` block of deploy/k8s/base/nats/configmap.yaml from
kiln_common.nats_access (its passwords: environment variables the StatefulSet
sets from the nats-users Secret). tests/unit/test_k8s_manifests.py fails while
the two differ; run this after changing the table."""

from __future__ import annotations

import textwrap
from pathlib import Path

from kiln_common.nats_access import ADMIN, SERVICES, server_config

CONFIGMAP = Path(__file__).resolve().parent.parent / "deploy/k8s/base/nats/configmap.yaml"


def main() -> None:
    text = CONFIGMAP.read_text()
    start = text.index("    authorization {")
    users = {u: f"$NATS_{u.upper()}_PASSWORD" for u in (ADMIN, *SERVICES)}
    block = textwrap.indent(server_config(users, variables=True), "    ")
    CONFIGMAP.write_text(text[:start] + block)  # the block is the file's last


if __name__ == "__main__":
    main()
