"""`cai iterate CONFIG [key=value ...]`: SL-CAI, then RL-CAI rounds from the SL model, each audited and gated
(cai_pipeline/iterate.py). One line per round, then the best model's path. Running the same command again
continues where it stopped; a finished round is not redone."""

from __future__ import annotations

import argparse

from cai_pipeline.cli.common import add_config, add_no_report, add_overrides, add_verbose, load_run_config


def _cmd_iterate(args: argparse.Namespace) -> int:
    from cai_pipeline.iterate import run_iterate
    from cai_pipeline.store import RunLayout

    cfg = load_run_config(args.config, args.overrides)
    record = run_iterate(cfg, verbose=args.verbose, report=args.report, echo=lambda line: print(line, flush=True))
    if record["stopped"]:
        print(f"stopped after {record['stopped']['round']}: {record['stopped']['reason']}")
    best = record["best"]
    print(f"best model: {best['model']} (round {best['round']})" if best else "no round finished")
    print(f"record: {RunLayout(cfg.out_dir).iterate_manifest}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "iterate",
        help="the CAI paper's recipe: an SL round, then RL rounds from it, each audited and gated",
        description="Round 0 (rounds/00-sl): sample, revise, SFT on the final revisions, audit against the base "
        "model. Each of iterate.rounds RL rounds (rounds/01-rl, ...): sample pairs from the previous round's "
        "model, judge them, train with the preference loss, audit against the previous model, and stop unless "
        "the gate passes. Writes <out_dir>/iterate.json and report.html. See docs/iterate.md.",
    )
    add_config(p, "configs/cai-paper.yaml")
    add_overrides(p, "iterate.rounds=1 prompts.limit=8")
    add_verbose(p)
    add_no_report(p)
    p.set_defaults(func=_cmd_iterate)
