"""Safe YAML for recipes, and the line locator: one document parsed with
its node tree kept, so every problem can name the line it is on. Syntax
errors, duplicate keys (which loaders otherwise drop silently) and alias
bombs are RecipeErrors with their lines."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from kiln_recipe.issues import RecipeError, RecipeIssue

# A 1 MiB document cannot hold this many nodes unless aliases multiply them:
# the cap stops "billion laughs" and self-referencing aliases.
_MAX_NODES = 1_000_000
# PyYAML's composer recurses, so no parsed document nests deeper than this;
# only a recursive alias does.
_MAX_DEPTH = 1000


def load_yaml_document(text: str, filename: str = "<yaml>") -> tuple[object, yaml.Node | None]:
    """One YAML document, parsed safely, as (data, node tree). Syntax errors,
    duplicate keys and alias bombs are a RecipeError with their lines."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        problems = _structure_issues(root)
        if problems:
            raise RecipeError(problems, filename)
        return loader.construct_document(root), root
    except yaml.MarkedYAMLError as exc:
        raise RecipeError([_syntax_issue(exc)], filename) from None
    except yaml.YAMLError as exc:
        raise RecipeError([RecipeIssue("", None, f"invalid YAML: {exc}")], filename) from None
    except RecursionError:
        raise RecipeError([RecipeIssue("", None, "nested too deeply")], filename) from None
    finally:
        loader.dispose()


def _syntax_issue(exc: yaml.MarkedYAMLError) -> RecipeIssue:
    mark = exc.problem_mark or exc.context_mark
    context, problem = exc.context or "", exc.problem or ""
    if context.startswith("while") and exc.context_mark is not None:
        message = f"{problem} ({context} on line {exc.context_mark.line + 1})"
    else:
        message = ", ".join(p for p in (context, problem) if p)
    return RecipeIssue("", None if mark is None else mark.line + 1, f"invalid YAML: {message}")


# A path in the document as a linked list (parent, part): O(1) to extend, so
# walking a deeply aliased document stays linear.
_Trail = tuple["_Trail", str | int] | None


def _structure_issues(root: yaml.Node) -> list[RecipeIssue]:
    """Duplicate keys (which YAML loaders otherwise drop silently), and aliases
    that nest without end or expand beyond _MAX_NODES. Walks iteratively:
    aliases share nodes, so the walk sees what construction would build."""
    issues: list[RecipeIssue] = []
    stack: list[tuple[yaml.Node, _Trail, int]] = [(root, None, 0)]
    seen = 0
    while stack:
        node, trail, depth = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            return [RecipeIssue("", None, "aliases expand to too many nodes")]
        if depth > _MAX_DEPTH:
            return [RecipeIssue("", None, "nested too deeply (a recursive alias?)")]
        if isinstance(node, yaml.MappingNode):
            issues += _duplicate_keys(node, trail)
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                stack.append((value, (trail, name), depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, (trail, i), depth + 1) for i, item in enumerate(node.value)]
    return issues


def _duplicate_keys(node: yaml.MappingNode, trail: _Trail) -> list[RecipeIssue]:
    issues: list[RecipeIssue] = []
    first_line: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first_line:
            path = format_path([*_unwind(trail), key.value])
            problem = (
                f"duplicate key {key.value!r} (first on line {first_line[key.tag, key.value]})"
            )
            issues.append(RecipeIssue(path, line, problem))
        else:
            first_line[key.tag, key.value] = line
    return issues


def _unwind(trail: _Trail) -> list[str | int]:
    parts: list[str | int] = []
    while trail is not None:
        trail, part = trail
        parts.append(part)
    return parts[::-1]


def format_path(parts: Sequence[str | int]) -> str:
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


def locate(root: yaml.Node, loc: tuple[int | str, ...], keep_from: int) -> tuple[str, int]:
    """The field path and line of `loc`: the deepest node the document has
    (a mapping entry's key line, a list item's first line). Parts of loc from
    keep_from on are kept in the path even where the document lacks them."""
    node, line, parts = root, root.start_mark.line + 1, []
    for index, part in enumerate(loc):
        child = _child(node, part)
        if child is not None:
            node, line = child
            parts.append(part)
        elif index >= keep_from:
            parts.append(part)
    return format_path(parts), line


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node, int] | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        # The last match: after a merge (<<) the explicit key comes last and wins.
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return value, key.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line + 1
    return None
