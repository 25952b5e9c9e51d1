"""`cai constitution validate | import | show | diff`: check, import, inspect and compare constitution files.

Thin: the work lives in cai_pipeline.constitution, importers and constitution_diff; this module parses
arguments and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cai_pipeline.constitution import dump_constitution, load_constitution, validate_file
from cai_pipeline.constitution_diff import diff_constitutions, excerpt
from cai_pipeline.importers import import_cai_paper, import_hf_recipe
from cai_pipeline.store import check_output_file

_IMPORTERS = {"cai-paper": import_cai_paper, "hf-recipe": import_hf_recipe}


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
    check_output_file(out, "-o", force=args.force)  # an existing file only with --force; a folder never
    constitution = _IMPORTERS[args.format](args.source)
    dump_constitution(constitution, out)
    problems = validate_file(out)
    if problems:  # a bug in an importer, not the user's input: say so loudly
        raise RuntimeError(f"imported file does not validate: {problems[0]}")
    print(f"wrote {out}: {len(constitution.principles)} principles, {len(constitution.few_shot)} few-shot examples")
    if "Note:" in constitution.description:
        print(constitution.description[constitution.description.index("Note:"):])
    return 0


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
        table.add_row(p.id, ", ".join(p.tags), f"{p.weight:g}", excerpt(p.critique, args.width))
    console = Console()
    if c.description:
        console.print(c.description, highlight=False)
    console.print(table)
    return 0


# ---------------------------------------------------------------------------------------------------------
# diff


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
