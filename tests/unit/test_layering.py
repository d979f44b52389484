"""Which package may import which: the CLI is a leaf (nothing imports it),
the client library and the recipe serve everyone, and the services share only
kiln_common, kiln_client and kiln_recipe."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO

# package -> the first-party packages it may import
ALLOWED = {
    "kiln_common": {"kiln_api", "kiln_common"},
    "kiln_client": {"kiln_api", "kiln_common", "kiln_client"},
    "kiln_recipe": {"kiln_api", "kiln_common", "kiln_recipe"},
    "kiln_storage": {"kiln_api", "kiln_common", "kiln_storage"},
    "kiln_builder": {"kiln_api", "kiln_common", "kiln_client", "kiln_recipe", "kiln_builder"},
    "kiln_cli": {"kiln_api", "kiln_common", "kiln_client", "kiln_recipe", "kiln_cli"},
}
FIRST_PARTY = set(ALLOWED) | {"kiln_api"}


def imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & FIRST_PARTY


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package: str) -> None:
    sources = list((REPO / "services").glob(f"*/src/{package}/**/*.py"))
    assert sources, package
    wrong = {
        f"{path.relative_to(REPO)}: {sorted(imported(path) - ALLOWED[package])}"
        for path in sources
        if imported(path) - ALLOWED[package]
    }
    assert not wrong, wrong


def test_benchmarks_do_not_import_the_cli() -> None:
    wrong = [p for p in (REPO / "bench").rglob("*.py") if "kiln_cli" in imported(p)]
    assert not wrong, wrong
