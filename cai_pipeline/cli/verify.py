"""`cai verify RUN [--repair]`: read every file a run recorded and compare its size and sha256 with what was
written (cai_pipeline/integrity.py). Every run checks sizes and Parquet footers itself; this also finds a file
whose content changed at its written size. --repair removes what is damaged, so the same `cai run` (or
`cai iterate`) command makes it again."""

from __future__ import annotations

import argparse


def _cmd_verify(args: argparse.Namespace) -> int:
    from cai_pipeline.integrity import repair, verify
    from cai_pipeline.store import open_run

    store = open_run(args.run)
    checked, damages = verify(store)
    for d in damages:
        print(f"damaged: {d.path}: {d.problem}")
    if not damages:
        print(f"{store.root}: {checked} files checked, all as written")
        return 0
    if args.repair:
        removed = repair(damages)
        print(f"removed {len(removed)} files (damaged, or made from a damaged shard); run the same `cai run` or "
              "`cai iterate` command again to make them anew")
        return 0
    print(f"{store.root}: {checked} files checked, {len(damages)} damaged; `cai verify {args.run} --repair` removes "
          "them so the same run command makes them again")
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every file of a run against the size and sha256 recorded when it "
                       "was written", description="Read every shard, dataset and checkpoint file a run recorded "
                       "and compare it with what was written (exit 1 if any is damaged). Runs check sizes and "
                       "Parquet footers on their own; this also finds content changed at the same size.")
    p.add_argument("run", help="a run folder (out_dir), or a `cai iterate` folder (its rounds too)")
    p.add_argument("--repair", action="store_true", help="remove the damaged files (and shards made from them) so "
                   "the same run command makes them again")
    p.set_defaults(func=_cmd_verify)
