"""`cai run CONFIG [key=value ...]`: run (or resume) the configured stages into the run folder."""

from __future__ import annotations

import argparse

from cai_pipeline import stages
from cai_pipeline.cli.common import add_config, add_no_report, add_overrides, add_verbose, load_run_config


def _cmd_run(args: argparse.Namespace) -> int:
    from cai_pipeline.pipeline import run_pipeline

    cfg = load_run_config(args.config, args.overrides)
    if args.reuse:
        cfg = cfg.model_copy(update={"reuse": args.reuse})
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages is not None else None
    run_pipeline(cfg, stages=wanted, restart=args.restart, verbose=args.verbose, report=args.report)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline stages of a config (resumes an existing run folder)")
    add_config(p)
    add_overrides(p)
    p.add_argument("--stages", help=f"comma-separated subset, in any order: {','.join(stages.names())}")
    p.add_argument("--restart", action="store_true", help="delete what earlier runs made in out_dir (only in a "
                   "folder with a cai-pipeline manifest, only the entries a run writes) and start over")
    p.add_argument("--reuse", metavar="OLD_RUN", help="take rows from an earlier run folder wherever the inputs "
                   "that made them are unchanged, compute the rest (the same as the config's `reuse:`; OLD_RUN is "
                   "only read): see docs/reuse.md")
    add_verbose(p)
    add_no_report(p)
    p.set_defaults(func=_cmd_run)
