"""`cai constitution validate | import | show | diff`: check, import, inspect and compare constitution files.

Thin: the work lives in cai_pipeline.constitution; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from cai_pipeline.constitution import (
    Constitution,
    Principle,
    dump_constitution,
    load_constitution,
    validate_file,
)
from cai_pipeline.errors import UserError
from cai_pipeline.importers import import_cai_paper, import_hf_recipe

_IMPORTERS = {"cai-paper": import_cai_paper, "hf-recipe": import_hf_recipe}
_HEADER_FIELDS = ("name", "version", "description", "templates")


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for file in args.files:
        problems = validate_file(file)
        for line in problems:
            print(line)
        if problems:
            failed = True
            continue
        c = load_constitution(file)
        print(f"{file}: ok ({len(c.principles)} principles, {len(c.few_shot)} few-shot examples)")
    return 1 if failed else 0


def _cmd_import(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out}: already exists; choose another -o path or pass --force to overwrite it")
    constitution = _IMPORTERS[args.format](args.source)
    dump_constitution(constitution, out)
    problems = validate_file(out)
    if problems:  # a bug in an importer, not the user's input: say so loudly
        raise RuntimeError(f"imported file does not validate: {problems[0]}")
    print(f"wrote {out}: {len(constitution.principles)} principles, {len(constitution.few_shot)} few-shot examples")
    if "Note:" in constitution.description:
        print(constitution.description[constitution.description.index("Note:"):])
    return 0


def _excerpt(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    c = load_constitution(args.file)
    table = Table(title=f"{c.name} {c.version} — {len(c.principles)} principles, {len(c.few_shot)} few-shot",
                  expand=True)
    # ids are what people type and grep for: never wrap them; the critique excerpt takes what is left.
    table.add_column("id", no_wrap=True, min_width=max(len(p.id) for p in c.principles))
    table.add_column("tags", ratio=2, overflow="fold")
    table.add_column("weight", justify="right", no_wrap=True)
    table.add_column("critique", ratio=5)
    for p in c.principles:
        table.add_row(p.id, ", ".join(p.tags), f"{p.weight:g}", _excerpt(p.critique, args.width))
    console = Console()
    if c.description:
        console.print(c.description, highlight=False)
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------------------------
# diff: pure functions returning lines, then a printer


def _text_change(field: str, old: object, new: object) -> list[str]:
    """One field's change: short values inline, texts as word-level -/+ lines."""
    if not (isinstance(old, str) and isinstance(new, str)) or max(len(old), len(new)) <= 40:
        return [f"    {field}: {old!r} → {new!r}"]
    lines = [f"    {field}:"]
    matcher = difflib.SequenceMatcher(None, old.split(), new.split())
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op in ("replace", "delete"):
            lines.append("      - " + " ".join(old.split()[i1:i2]))
        if op in ("replace", "insert"):
            lines.append("      + " + " ".join(new.split()[j1:j2]))
    return lines


def _principle_changes(old: Principle, new: Principle) -> list[str]:
    a, b = old.model_dump(), new.model_dump()
    return [line for f in a if a[f] != b[f] for line in _text_change(f, a[f], b[f])]


def _renames(removed: dict[str, Principle], added: dict[str, Principle]) -> dict[str, str]:
    """old id → new id where a principle kept every field but its id (a rename, not a remove plus an add)."""
    def body(p: Principle) -> dict:
        return p.model_dump(exclude={"id"})

    return {o: n for o, po in removed.items() for n, pn in added.items() if body(po) == body(pn)}


def diff_constitutions(old: Constitution, new: Constitution) -> list[str]:
    """Human-readable lines: header fields, principles added (+), removed (-), renamed (>) and changed (~)
    field by field, and few-shot examples added/removed. [] when the two are the same."""
    lines = [ln for f in _HEADER_FIELDS if getattr(old, f) != getattr(new, f)
             for ln in _text_change(f, getattr(old, f), getattr(new, f))]
    lines = ["~ header"] + lines if lines else []
    olds, news = {p.id: p for p in old.principles}, {p.id: p for p in new.principles}
    removed = {i: p for i, p in olds.items() if i not in news}
    added = {i: p for i, p in news.items() if i not in olds}
    renames = _renames(removed, added)
    lines += [f"> {o} renamed to {n}" for o, n in renames.items()]
    lines += [f"- {i}: {_excerpt(p.critique, 70)}" for i, p in removed.items() if i not in renames]
    lines += [f"+ {i}: {_excerpt(p.critique, 70)}" for i, p in added.items() if i not in renames.values()]
    for pid in (i for i in olds if i in news):
        changes = _principle_changes(olds[pid], news[pid])
        lines += [f"~ {pid}"] + changes if changes else []
    return lines + _few_shot_changes(old, new)


def _few_shot_changes(old: Constitution, new: Constitution) -> list[str]:
    key = lambda ex: ex.model_dump_json()  # noqa: E731 - examples have no id; compare by content
    olds, news = [key(e) for e in old.few_shot], [key(e) for e in new.few_shot]
    gone = [e for e in old.few_shot if key(e) not in news]
    came = [e for e in new.few_shot if key(e) not in olds]
    return [f"- few_shot ({e.principle_id}): {_excerpt(e.prompt, 60)}" for e in gone] + [
        f"+ few_shot ({e.principle_id}): {_excerpt(e.prompt, 60)}" for e in came
    ]


def _cmd_diff(args: argparse.Namespace) -> int:
    lines = diff_constitutions(load_constitution(args.old), load_constitution(args.new))
    print("\n".join(lines) if lines else "no differences")
    return 1 if lines and args.exit_code else 0


# ---------------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("constitution", help="validate, import, show and diff constitution files")
    csub = p.add_subparsers(dest="constitution_cmd", required=True, metavar="subcommand")

    v = csub.add_parser("validate", help="list every problem as file:line: field: message (exit 1 if any)")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(func=_cmd_validate)

    i = csub.add_parser("import", help="convert the CAI paper's files or a Hugging Face recipe JSON to YAML")
    i.add_argument("--format", required=True, choices=sorted(_IMPORTERS),
                   help="cai-paper: a folder with CritiqueRevisionInstructions.json; hf-recipe: one JSON file")
    i.add_argument("source", metavar="DIR_OR_FILE")
    i.add_argument("-o", "--output", required=True, metavar="FILE", help="the constitution YAML to write")
    i.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    i.set_defaults(func=_cmd_import)

    s = csub.add_parser("show", help="print the principles as a table")
    s.add_argument("file", metavar="FILE")
    s.add_argument("--width", type=int, default=80, help="characters of each critique to show")
    s.set_defaults(func=_cmd_show)

    d = csub.add_parser("diff", help="principles added, removed, renamed and changed field by field")
    d.add_argument("old", metavar="OLD")
    d.add_argument("new", metavar="NEW")
    d.add_argument("--exit-code", action="store_true", help="exit 1 when the files differ (like git diff)")
    d.set_defaults(func=_cmd_diff)
