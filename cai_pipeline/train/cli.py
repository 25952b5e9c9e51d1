"""`cai train CONFIG [key=value ...]`: train on a run's preference dataset (or any TRL-format Parquet).

The train stage of the pipeline, run on its own: a finished, unchanged training is skipped, a checkpoint made
with other settings is never replaced silently (`--restart` trains again), and manifest.json records it.
"""

from __future__ import annotations

import argparse
import json
import logging


def _print_summary(summary: dict) -> None:
    after = summary.get("eval_after") or {}
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"metrics and plots: {summary['log_dir']}")
    print(f"{summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
          f"reward accuracy {summary['reward_accuracy']:.2f}, {summary['pairs_per_s']:.2f} pairs/s"
          + (f"; test loss {after['loss']:.4f}, test accuracy {after['rewards/accuracies']:.2f}" if after else ""))
    truncated = {name: {k: v for k, v in c.items() if k != "rows" and v} for name, c in summary["counts"].items()}
    if any(truncated.values()):
        print(f"truncated rows: {json.dumps(truncated)}")


def _cmd_train(args: argparse.Namespace) -> int:
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline

    cfg = load_config(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = run_pipeline(cfg, stages=["train"], redo=("train",) if args.restart else (), verbose=args.verbose,
                            summary=False, report=args.report)
    entry = manifest["stages"]["train"]
    if manifest["last_run"]["train"] == "already done":
        print(f"already trained with these settings: {entry['summary']['checkpoint']} (--restart trains again)")
    _print_summary(entry["summary"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from cai_pipeline.cli import add_no_report, add_overrides, add_verbose

    p = sub.add_parser(
        "train",
        help="train a model (dpo, ipo, simpo, orpo) on the run's preference dataset",
        description="Train with the config's `train:` section. Data defaults to <out_dir>/datasets/preferences, "
        "the checkpoint to <out_dir>/checkpoint, metrics and plots to <out_dir>/train. A finished training with "
        "the same data and settings is not repeated. See docs/config-train.md for every field.",
    )
    p.add_argument("config", help="a run config YAML, e.g. configs/demo.yaml")
    add_overrides(p, "train.loss=simpo train.lr=5e-7")
    p.add_argument("--restart", action="store_true", help="train again from the start, replacing the checkpoint")
    add_verbose(p)
    add_no_report(p)
    p.set_defaults(func=_cmd_train)
