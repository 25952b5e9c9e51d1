"""`cai plan CONFIG [key=value ...] [--json] [--calibrate N] [--from RUN]`: requests, tokens, seconds and cost
of a run per stage, before it runs (cai_pipeline/plan.py says what is exact and what is estimated)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from cai_pipeline.cli.common import add_config, add_overrides, load_run_config
from cai_pipeline.errors import UserError


def calibrate(cfg, prompts: int, engine=None):
    """A short run of the planned model stages on `prompts` prompts in a scratch folder: its timings and
    lengths are this machine's and this engine's (the model's start-up time is not in them)."""
    from cai_pipeline.pipeline import run_pipeline
    from cai_pipeline.plan import PLANNED, observe

    with tempfile.TemporaryDirectory(prefix="cai-calibrate-") as scratch:
        limit = min(prompts, cfg.prompts.limit or prompts)
        short = cfg.model_copy(update={"out_dir": scratch, "stages": [s for s in PLANNED if s in cfg.stages],
                                       "prompts": cfg.prompts.model_copy(update={"limit": limit})})
        run_pipeline(short, engine=engine, summary=False, report=False, warn=False)
        seen = observe(scratch)
    if seen is not None:
        seen.source = f"a calibration run of {limit} prompts"
    return seen


def build(cfg, *, calibrate_prompts: int = 0, observed_from: str | None = None, engine=None):
    """(plan, estimates, notes) for `cfg`; the run folder (or `observed_from`) gives lengths and timings."""
    from cai_pipeline.assets import load_assets
    from cai_pipeline.plan import make_plan, observe, stage_estimates, token_counter

    assets = load_assets(cfg)
    observed = observe(observed_from or cfg.out_dir)
    if observed_from and observed is None:
        raise UserError(f"--from: {observed_from} holds no finished shards with request counts; give a run folder "
                        "made by this version of cai-pipeline")
    if calibrate_prompts:
        observed = calibrate(cfg, calibrate_prompts, engine)
    if engine is not None:
        count, how = engine.count_tokens, f"tokens counted by the {engine.name} engine"
        judge_count = count
    else:
        count, how = token_counter(cfg.model)
        judge_count = token_counter(cfg.judge.model)[0] if cfg.judge.model and cfg.judge.model != cfg.model else count
    estimates = stage_estimates(cfg, assets, count, observed, judge_count)
    notes = [how, f"lengths and seconds from {observed.source}" if observed else
             "seconds unknown: no run folder to learn from; run it once, or use --calibrate N"]
    return make_plan(cfg, estimates, observed), estimates, notes


def _fmt(value) -> str:
    if value is None:
        return "unknown"
    return f"{value:,.4f}" if isinstance(value, float) and value < 1 else f"{value:,.0f}"


def print_table(plan, estimates, notes) -> None:
    head = f"{'stage':<8} {'requests':>9} {'sequences':>9} {'input tok':>11} {'output tok':>11} {'seconds':>9} {'cost':>10}"
    print(head)
    for name, s in plan.stages.items():
        print(f"{name:<8} {s.requests:>9,} {estimates[name].sequences:>9,} {s.input_tokens:>11,} "
              f"{s.output_tokens:>11,} {_fmt(s.seconds):>9} {_fmt(s.cost):>10}")
    t = plan.total
    print(f"{'total':<8} {t.requests:>9,} {sum(e.sequences for e in estimates.values()):>9,} {t.input_tokens:>11,} "
          f"{t.output_tokens:>11,} {_fmt(t.seconds):>9} {_fmt(t.cost):>10}")
    for name, est in estimates.items():
        for note in est.notes:
            print(f"  {name}: {note}")
    for note in notes:
        print(f"  {note}")


def _cmd_plan(args: argparse.Namespace) -> int:
    cfg = load_run_config(args.config, args.overrides)
    if args.calibrate is not None and args.calibrate < 1:
        raise UserError("--calibrate: give a number of prompts ≥ 1, e.g. --calibrate 2")
    if args.observed and not Path(args.observed).is_dir():
        raise UserError(f"--from: {args.observed} is not a folder; give a run folder")
    from cai_pipeline.console import quiet_libraries

    quiet_libraries(False)
    plan, estimates, notes = build(cfg, calibrate_prompts=args.calibrate or 0, observed_from=args.observed)
    if args.json:
        json.dump(plan.model_dump(mode="json"), sys.stdout)
        print()
    else:
        print_table(plan, estimates, notes)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="requests, tokens, seconds and cost per stage, before a run")
    add_config(p)
    add_overrides(p)
    p.add_argument("--json", action="store_true", help='print {"stages": {name: {requests, input_tokens, '
                   'output_tokens, seconds, cost}}, "total": {...}} (seconds and cost null when unknown)')
    p.add_argument("--calibrate", type=int, metavar="N", help="first run the model stages on N prompts in a scratch "
                   "folder, for this engine's lengths and seconds per request")
    p.add_argument("--from", dest="observed", metavar="RUN", help="lengths and seconds from this run folder "
                   "(default: the config's out_dir, where it holds a run)")
    p.set_defaults(func=_cmd_plan)
