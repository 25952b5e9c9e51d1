"""`cai compare RUN_A RUN_B` (two runs side by side) and `cai compare RUN` (the rounds of a `cai iterate`
folder); the work is cai_pipeline/compare.py."""

from __future__ import annotations

import argparse


def _cmd_compare(args: argparse.Namespace) -> int:
    from cai_pipeline.compare import compare

    compare(args.run_a, args.run_b, examples=args.examples)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="what changed between two runs (e.g. two versions of a constitution)")
    p.add_argument("run_a", help="a run folder (out_dir)")
    p.add_argument("run_b", nargs="?", help="another run folder; without it, the rounds of a `cai iterate` folder")
    p.add_argument("--examples", type=int, default=3, help="side-by-side final revisions to show")
    p.set_defaults(func=_cmd_compare)
