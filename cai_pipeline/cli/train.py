"""`cai train CONFIG [key=value ...] [--nproc N]`: train on a run's datasets (or on other people's data).

The train stage of the pipeline, run on its own: a finished, unchanged training is skipped, one cut short
resumes from its newest state, a checkpoint made with other settings is never replaced silently (`--restart`
trains again), and manifest.json records it. `--nproc N` is `train.nproc=N`: N data-parallel processes.
"""

from __future__ import annotations

import argparse
import json
import logging

from cai_pipeline.cli.common import add_config, add_no_report, add_overrides, add_verbose, load_run_config


def _print_summary(summary: dict) -> None:
    after = summary.get("eval_after") or {}
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"metrics and plots: {summary['log_dir']}")
    if summary["loss_type"] == "sft":
        line = (f"{summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
                f"{summary['examples_per_s']:.2f} conversations/s" + (f"; test loss {after['loss']:.4f}" if after else ""))
    else:
        line = (f"{summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
                f"reward accuracy {summary['reward_accuracy']:.2f}, {summary['pairs_per_s']:.2f} pairs/s"
                + (f"; test loss {after['loss']:.4f}, test accuracy {after['rewards/accuracies']:.2f}" if after else ""))
    print(line + (f" (resumed from step {summary['resumed_from']})" if summary.get("resumed_from") else ""))
    counts = summary["counts"]
    truncated = {name: {k: v for k, v in c.items() if k not in ("rows", "rejected") and v} for name, c in counts.items()}
    if any(truncated.values()):
        print(f"truncated rows: {json.dumps(truncated)}")
    rejected = {name: c["rejected"] for name, c in counts.items() if c.get("rejected")}
    if rejected:
        print(f"rejected rows (rejects/train/): {json.dumps(rejected)}")


def _cmd_train(args: argparse.Namespace) -> int:
    from cai_pipeline.pipeline import run_pipeline, with_run_settings

    launch = [f"train.nproc={args.nproc}"] if args.nproc is not None else []
    if args.accelerate_config is not None:
        launch.append(f"train.accelerate_config={args.accelerate_config}")
    cfg, ignored = with_run_settings(load_run_config(args.config, [*args.overrides, *launch]), ("train",))
    if ignored:  # training reads the run's datasets: their model and seed are the run's
        shown = ", ".join(f"{k}={getattr(cfg, k)}" for k in ignored)
        print(f"note: training uses the run's {shown} from its manifest, not the config's; set train.model or "
              "train.seed to change them")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = run_pipeline(cfg, stages=["train"], redo=("train",) if args.restart else (), verbose=args.verbose,
                            summary=False, report=args.report)
    entry = manifest["stages"]["train"]
    if manifest["last_run"]["train"] == "already done":
        print(f"already trained with these settings: {entry['summary']['checkpoint']} (--restart trains again)")
    _print_summary(entry["summary"])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (sft, dpo, ipo, simpo, orpo) on the run's datasets",
        description="Train with the config's `train:` section. Data defaults to <out_dir>/datasets/preferences "
        "(loss sft: <out_dir>/datasets/sft), the checkpoint to <out_dir>/checkpoint, metrics, plots and "
        "resumable states to <out_dir>/train. A finished training with the same data and settings is not "
        "repeated; one cut short resumes. See docs/config-train.md for every field.",
    )
    add_config(p)
    add_overrides(p, "train.loss=simpo train.lr=5e-7")
    p.add_argument("--restart", action="store_true", help="train again from the start, replacing the checkpoint "
                   "and discarding resumable states")
    p.add_argument("--nproc", type=int, metavar="N", help="data-parallel processes on this machine (torchrun; "
                   "DDP, gloo on CPU, NCCL on GPU); the same as train.nproc=N")
    p.add_argument("--accelerate-config", metavar="FILE", help="launch with `accelerate launch` and this config "
                   "(FSDP, DeepSpeed); the same as train.accelerate_config=FILE")
    add_verbose(p)
    add_no_report(p)
    p.set_defaults(func=_cmd_train)
