"""Kiln's recipe: the schema (kiln_recipe.schema), the YAML line locator
(kiln_recipe.yamldoc), the loader that reports every problem with its field
path and line (kiln_recipe.loader), and the recipe as a submission
(kiln_recipe.submission). The builder and the CLI both declare it."""

from kiln_recipe.issues import RecipeError, RecipeIssue
from kiln_recipe.loader import load_recipe, parse_recipe
from kiln_recipe.schema import Recipe
from kiln_recipe.yamldoc import load_yaml_document

__all__ = [
    "Recipe",
    "RecipeError",
    "RecipeIssue",
    "load_recipe",
    "load_yaml_document",
    "parse_recipe",
]
