"""`cai train CONFIG [key=value ...]`: train on a run's preference dataset (or any TRL-format Parquet)."""

from __future__ import annotations

import argparse
import json
import logging


def _cmd_train(args: argparse.Namespace) -> int:
    from cai_pipeline.config import load_config
    from cai_pipeline.train.loop import train

    cfg = load_config(args.config, args.overrides)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = train(cfg)
    after = summary.get("eval_after") or {}
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"metrics and plots: {summary['log_dir']}")
    print(f"{summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
          f"reward accuracy {summary['reward_accuracy']:.2f}, {summary['pairs_per_s']:.2f} pairs/s"
          + (f"; test loss {after['loss']:.4f}, test accuracy {after['rewards/accuracies']:.2f}" if after else ""))
    truncated = {name: {k: v for k, v in c.items() if k != "rows" and v} for name, c in summary["counts"].items()}
    if any(truncated.values()):
        print(f"truncated rows: {json.dumps(truncated)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="preference-train a model (dpo, ipo, simpo, orpo) on the run's preference dataset",
        description="Train with the config's `train:` section. Data defaults to <out_dir>/datasets/preferences, "
        "the checkpoint to <out_dir>/checkpoint, metrics and plots to <out_dir>/train. "
        "See docs/config-train.md for every field.",
    )
    p.add_argument("config", help="a run config YAML, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.loss=simpo train.lr=5e-7")
    p.set_defaults(func=_cmd_train)
