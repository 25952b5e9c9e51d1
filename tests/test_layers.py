"""The house reads top-down: command line → pipeline / iterate → (the report and other readers of a run folder)
→ executors → stages → engines and trainer → constitution, templates → config, records, store. Every import statement in the package counts, at module
level or inside a function: no cycles, no import from a floor above, and the trainer knows nothing of how its
data was made. `make lint` runs this file too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cai_pipeline"

# Floors, bottom up: a module may import its own floor and those below. The first prefix that matches wins.
FLOORS = [
    ("ground", ("errors", "rng", "records", "store", "yamlio", "bundled", "fingerprint", "console", "ngrams",
                "train.config", "config", "rowkeys", "reuse")),
    ("definitions", ("checks", "constitution", "templates", "inputs", "models", "importers", "constitution_diff",
                     "judge_roles")),
    ("engines and trainer", ("engines", "train", "judging")),
    ("stages", ("stages", "audit", "assets", "card", "integrity")),
    ("executors", ("executors",)),
    # what reads a run folder: a run ends by writing its report, so these sit below the pipeline
    ("readers", ("report", "compare", "edit_effects", "judge_eval", "judge_check", "agreement", "plan")),
    ("pipeline", ("pipeline", "iterate")),
    ("command line", ("cli",)),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str, known: dict) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(name: str, path: Path, known: dict) -> set[str]:
    """The package modules `name` imports, anywhere in its file (relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            found = resolve(target, known)
            # a package's own __init__ importing its submodules, and a submodule its package, are structure
            if found and found != name and not name.startswith(found + "."):
                out.add(found)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def floor(name: str) -> int:
    short = name.removeprefix("cai_pipeline.")
    for level, (_, prefixes) in enumerate(FLOORS):
        if any(short == p or short.startswith(p + ".") for p in prefixes):
            return level
    if short == "cai_pipeline":
        return 0
    raise AssertionError(f"{name} is on no floor: add it to FLOORS in {__file__}")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_no_module_imports_a_floor_above_its_own():
    upward = [f"{a} ({FLOORS[floor(a)][0]}) imports {b} ({FLOORS[floor(b)][0]})"
              for a, targets in graph().items() for b in sorted(targets) if floor(b) > floor(a)]
    assert upward == []


def test_the_trainer_knows_models_data_and_paths_only():
    forbidden = ("cai_pipeline.stages", "cai_pipeline.pipeline", "cai_pipeline.config", "cai_pipeline.executors")
    found = [f"{a} imports {b}" for a, targets in graph().items() if a.startswith("cai_pipeline.train")
             for b in targets if b.startswith(forbidden)]
    assert found == []


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


if __name__ == "__main__":
    problems = cycles(graph())
    print("\n".join("cycle: " + " ".join(c) for c in problems) or "0 import cycles")
