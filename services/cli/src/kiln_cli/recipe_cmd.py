"""`kiln recipe check RECIPE...`: validate recipes locally, before submitting
them, with the same checks the builder runs. Problems print one per line as
`FILE:LINE: field.path: message`, like a compiler's, so editors can jump to them."""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln_cli import output
from kiln_recipe import RecipeError, load_recipe


def add_recipe_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers the `recipe` command group on the kiln command line."""
    group = subparsers.add_parser("recipe", help="image recipes").add_subparsers(
        dest="verb", required=True
    )
    check = group.add_parser(
        "check", help="validate recipes; prints each problem as FILE:LINE: field: message"
    )
    check.add_argument("recipe", nargs="+", help="recipe YAML file(s)")
    check.set_defaults(fn=cmd_recipe_check)


def cmd_recipe_check(args: argparse.Namespace) -> int:
    """0 if every recipe is valid, 1 if any has a problem."""
    as_json = getattr(args, "json", False)  # (a Namespace made by hand has none)
    status, found = 0, []
    for name in args.recipe:
        try:
            recipe = load_recipe(Path(name))
        except RecipeError as exc:
            status = 1
            found.append({"file": name, "valid": False,
                          "problems": [i.render(name) for i in exc.issues]})  # fmt: skip
            if not as_json:
                for issue in exc.issues:
                    print(issue.render(name))
            continue
        found.append({"file": name, "valid": True, "name": recipe.name,
                      "version": recipe.version, "problems": []})  # fmt: skip
        if not as_json:
            print(f"{name}: OK ({recipe.name} {recipe.version})")
    if as_json:
        output.emit(found)
    return status
