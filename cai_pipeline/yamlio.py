"""YAML as users write it: one parse that keeps line numbers, repeated keys found (PyYAML silently keeps the
last of two), and syntax errors as (line, problem). Config files and constitutions both read through here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


def parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (for line numbers) and the data it constructs, from one parse."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def syntax_problem(e: yaml.YAMLError) -> tuple[int, str]:
    """(1-based line, what is wrong) of a YAML syntax error."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return (mark.line + 1 if mark else 1), problem


def line_of(root: yaml.Node | None, loc: Sequence[Any]) -> int:
    """1-based line of the deepest node along `loc` that exists (the key's line for mapping entries)."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def duplicate_keys(node: yaml.Node | None, loc: tuple = ()) -> list[tuple[int, tuple, str]]:
    """(line, location, message) for each repeated key: an edited file often has exactly that mistake."""
    problems: list[tuple[int, tuple, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if k.value in seen:
                msg = "appears twice in this mapping (the last one wins); remove one"
                problems.append((k.start_mark.line + 1, loc + (k.value,), msg))
            seen.add(k.value)
            problems += duplicate_keys(v, loc + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, loc + (i,))
    return problems


def dotted(loc: Sequence[Any]) -> str:
    """("principles", 2, "id") → principles[2].id"""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
