"""Which package may import which: the CLI is a leaf (nothing imports it),
the client library, the recipe and the marketplace's entry serve everyone, and
the services share only kiln_common, kiln_client, kiln_recipe and kiln_market:
no service imports another (the CLI does not import the publisher), and the local
stack and dev servers (kiln_devstack) serve only the CLI's `kiln up`, tests and benches."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from support import REPO

# package -> the first-party packages it may import
ALLOWED = {
    "kiln_common": {"kiln_api", "kiln_common"},
    "kiln_client": {"kiln_api", "kiln_common", "kiln_recipe", "kiln_client"},
    "kiln_recipe": {"kiln_common", "kiln_recipe"},
    "kiln_market": {"kiln_common", "kiln_market"},
    "kiln_devstack": {"kiln_common", "kiln_devstack"},
    "kiln_storage": {"kiln_api", "kiln_common", "kiln_storage"},
    "kiln_builder": {"kiln_api", "kiln_common", "kiln_client", "kiln_recipe", "kiln_builder"},
    "kiln_publisher": {
        "kiln_api", "kiln_common", "kiln_client", "kiln_recipe", "kiln_market", "kiln_publisher",
    },
    "kiln_cli": {
        "kiln_api", "kiln_common", "kiln_client", "kiln_recipe", "kiln_market", "kiln_devstack",
        "kiln_cli",
    },
}  # fmt: skip
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


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_declares_the_kiln_packages_it_imports_and_no_more(package: str) -> None:
    """Installing a package pulls in what its pyproject declares: the CLI that
    declared kiln-publisher brought openstacksdk and aiohttp along."""
    import tomllib

    (pyproject,) = (REPO / "services").glob(f"*/src/{package}/../../pyproject.toml")
    declared = {
        dep.replace("-", "_")
        for dep in tomllib.loads(pyproject.read_text())["project"]["dependencies"]
        if dep.startswith("kiln-")
    }
    used: set[str] = set()
    for path in (REPO / "services").glob(f"*/src/{package}/**/*.py"):
        used |= imported(path)
    used = {"kiln_common" if name == "kiln_api" else name for name in used} - {package}
    assert declared == used


# Protobuf stays at the edges: the servicers, the apps that register them, the
# client library (its wire layer) and the event envelope's encoder. The cores,
# the engine and the CLI work on domain models (kiln_common.builds,
# .artifacts, .publications; kiln_recipe.source).
EDGES = ("servicer.py", "app.py")
EDGE_PACKAGES = ("kiln_client",)
EDGE_MODULES = {"services/common/src/kiln_common/events.py"}


def test_only_the_edges_import_the_api_messages() -> None:
    importers = {
        str(path.relative_to(REPO))
        for path in (REPO / "services").glob("*/src/*/**/*.py")
        if "kiln_api" in imported(path) and "/src/kiln_api/" not in str(path)
    }
    edges = {
        name
        for name in importers
        if name.endswith(EDGES) or name in EDGE_MODULES
        or any(f"/src/{package}/" in name for package in EDGE_PACKAGES)
    }  # fmt: skip
    assert importers - edges == set()
