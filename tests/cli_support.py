"""The kiln command's verbs as its own parser defines them, for tests that must
cover every verb (a verb added later without its case fails them)."""

from __future__ import annotations

import argparse

from kiln_cli.main import build_parser


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> dict[str, bool]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        takes_json = any("--json" in a.option_strings for a in parser._actions)
        return {" ".join(path): takes_json}
    found: dict[str, bool] = {}
    for name, verb in subs[0].choices.items():
        found.update(_leaves(verb, (*path, name)))
    return found


def leaf_verbs() -> dict[str, bool]:
    """Every leaf verb by its words ("artifact show"), and whether it takes --json."""
    return _leaves(build_parser(), ())


def json_verbs() -> list[str]:
    return [verb for verb, takes_json in leaf_verbs().items() if takes_json]
