"""YAML as users write it: one parse that keeps line numbers, repeated keys found (PyYAML silently keeps the
last of two), and syntax errors as (line, problem). Config files and constitutions both read through here.

Aliases are bounded: a 1 KB file of nine anchors each repeating the last nine times ("billion laughs") expands
to 9^9 nodes, minutes and gigabytes of construction, so the expanded size is counted on the node graph first
(linear in the file) and a file past NODE_BUDGET is a syntax error. Merge keys (`<<: *base`) are YAML 1.1's
way to share a block; they are read as such, not as a repeated key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

NODE_BUDGET = 200_000  # nodes after alias expansion; the largest bundled file has under 2,000
_MERGE = "tag:yaml.org,2002:merge"


class Unreadable(yaml.YAMLError):
    """A file whose aliases expand past the budget, that refers to itself, that nests too deeply, or that holds
    a string no file can store (a lone surrogate)."""

    def __init__(self, problem: str, mark=None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def expanded_size(root: yaml.Node | None, budget: int = NODE_BUDGET) -> int:
    """Nodes the data would hold with every alias expanded, counted once per distinct node (an alias is the
    same node object as its anchor), so a bomb costs its file's size to measure, not its expansion's."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)] if root is not None else []
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        children = [n for kv in node.value for n in (kv if isinstance(kv, tuple) else (kv,))] \
            if isinstance(node, yaml.CollectionNode) else []
        if done:
            open_.discard(id(node))
            sizes[id(node)] = total = 1 + sum(sizes[id(c)] for c in children)
            if total > budget:
                raise Unreadable(f"the aliases (*name) expand to more than {budget:,} values (an alias bomb?); "
                                 "write the repeated parts out or use fewer aliases", node.start_mark)
            continue
        if id(node) in sizes:
            continue
        open_.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_:
                raise Unreadable("an alias refers to the block that contains it (an endless loop); remove it",
                                 child.start_mark)
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes.get(id(root), 0) if root is not None else 0


def parse(text: str) -> tuple[yaml.Node | None, Any, list[tuple[int, tuple, str]]]:
    """The YAML node tree (for line numbers), the data it constructs, and its repeated keys, from one parse.
    Repeated keys are found before construction: building the data folds merge keys into their mapping."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        expanded_size(node)
        repeated = duplicate_keys(node)
        data = loader.construct_document(node) if node is not None else None
        bad = next((n for n in _scalars(node) if not _is_text(n.value)), None)
        if bad is not None:  # "\ud800" in a double-quoted string: a lone surrogate, not a character
            raise Unreadable("a \\ud800-style escape that is half of a character (a lone surrogate); write the "
                             "character itself, or its \\U0001xxxx escape", bad.start_mark)
        return node, data, repeated
    except RecursionError:  # PyYAML composes and constructs recursively
        raise Unreadable("nested too deeply to read (thousands of levels); flatten it") from None
    finally:
        loader.dispose()


def _scalars(root: yaml.Node | None):
    """Every scalar node once (an alias is its anchor's node); the budget has bounded their number."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            yield node
        elif isinstance(node, yaml.CollectionNode):
            stack += [n for kv in node.value for n in (kv if isinstance(kv, tuple) else (kv,))]


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
            if k.tag == _MERGE:  # `<<: *base`: the keys it brings may be overridden here, as YAML intends
                continue
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
        if isinstance(part, str) and not (part.isprintable() and part.strip() == part and part):
            part = repr(part)  # a key with a line break in it: the message stays one line
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
