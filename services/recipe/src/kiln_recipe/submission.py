"""A recipe as the Builder API takes it: its text and every file it names
beside itself, checked locally first with the same checks the builder runs."""

from __future__ import annotations

from pathlib import Path

from kiln_recipe.loader import load_recipe
from kiln_recipe.schema import Recipe
from kiln_recipe.source import RecipeSource


def recipe_source(path: Path) -> tuple[Recipe, RecipeSource]:
    """The checked recipe and its submission; RecipeError if it is invalid."""
    recipe = load_recipe(path)
    names = [f.source for f in recipe.files if f.source]
    names += [r.script for r in recipe.run if r.script]
    names += [r.key for r in recipe.repositories]
    files = {name: (recipe.base_dir / name).read_bytes() for name in names}
    return recipe, RecipeSource(yaml=path.read_text(), files=files, filename=path.name)
