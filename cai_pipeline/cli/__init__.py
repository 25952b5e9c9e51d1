"""`cai`: the command line, the top floor of the house. Each command is a module here that parses its
arguments and calls the library (cli/common.py holds what they share); nothing below imports from here.

Every error a user can cause ends in one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import sys

from cai_pipeline import __version__
from cai_pipeline.cli import (
    audit,
    compare,
    config,
    constitution,
    iterate,
    judge_check,
    judge_eval,
    models,
    plan,
    report,
    run,
    train,
    verify,
)
from cai_pipeline.cli.common import IntermixedParser
from cai_pipeline.errors import UserError

EPILOG = """\
examples:
  cai models prepare                                  convert the embedded model once (also done lazily)
  cai run configs/demo.yaml                           prompts → samples → critiques/revisions → judge → datasets
  cai run configs/demo.yaml prompts.limit=4 engine.kind=hf out_dir=outputs/try
  cai run configs/demo.yaml --stages sample,revise    only these stages (their inputs must exist)
  cai plan configs/demo.yaml --calibrate 2            requests, tokens, seconds and cost per stage, before a run
  cai constitution validate constitutions/*.yaml      check constitution files, every problem with its line
  cai judge-eval --data hh-rlhf-harmless-base-test.jsonl.gz --limit 100
  cai judge-check configs/demo.yaml                   the run's judge probed for biases (length, markdown, ...)
  cai train configs/demo.yaml train.loss=sft          SL-CAI: fine-tune on the run's final revisions
  cai train configs/demo.yaml train.loss=simpo        train on the run's preference dataset
  cai train configs/demo.yaml --nproc 2               ... on 2 data-parallel processes (DDP)
  cai audit configs/demo.yaml                         the checkpoint vs the base model, per principle, with CIs
  cai iterate configs/cai-paper.yaml                  SL-CAI, then gated RL-CAI rounds (rounds/00-sl, 01-rl, ...)
  cai compare outputs/v1 outputs/v2                   what changed between two runs (say, two constitutions)
  cai compare outputs/cai-paper                       the rounds of a `cai iterate` run side by side
  cai report outputs/demo                             (re)write outputs/demo/report.html: open it in a browser
  cai show outputs/demo 3f2a                          one prompt's trace in the terminal (a prompt_id prefix)
  cai verify outputs/demo                             every file of the run as it was written (sha256)?

Options and key=value overrides go in any order. A run writes everything to its out_dir: sample/ revise/
pairs/ judge/ shards, datasets/ (sft, preferences, a dataset card), rejects/ (every dropped row with its
reason), manifest.json and report.html. Running again resumes; --restart deletes only what a run made (see
README).
"""

# In the order `cai --help` lists them.
COMMANDS = (run, plan, models, config, compare, constitution, judge_eval, judge_check, train, report, audit, iterate,
            verify)


def build_parser() -> argparse.ArgumentParser:
    parser = IntermixedParser(
        prog="cai",
        description="Constitutional AI data generation: sample, critique and revise against a constitution, "
        "judge pairs with AI feedback, export SFT and preference datasets, train with DPO/IPO/SimPO/ORPO.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cai-pipeline {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="command")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
