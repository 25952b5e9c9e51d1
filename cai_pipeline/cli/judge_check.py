"""`cai judge-check CONFIG [key=value ...]` (the run's judge on the run's pairs, into <out_dir>/judge-check/) and
`cai judge-check --data FILE --out DIR` (a judge on labelled pairs, as `cai judge-eval` reads them): the judge's
bias profile (cai_pipeline/judge_check/), as a table and files."""

from __future__ import annotations

import argparse

from cai_pipeline.cli.common import add_overrides, load_run_config
from cai_pipeline.cli.judge_eval import _positive
from cai_pipeline.errors import UserError


def _probes(text: str) -> list[str]:
    from cai_pipeline.judge_check.probes import PROBES

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROBES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown probe {unknown[0] if unknown else text!r}; the probes are "
                                         f"{','.join(PROBES)}")
    return names


def _from_run(args: argparse.Namespace):
    """(pairs, judge name, engine factory, constitution, layout, reasoning, seed, source, out layout, skipped)."""
    from cai_pipeline.bundled import resolve_resource
    from cai_pipeline.constitution import load_constitution
    from cai_pipeline.judge_check.inputs import run_pairs
    from cai_pipeline.judge_roles import same_model
    from cai_pipeline.store import RunLayout

    cfg = load_run_config(args.config, args.overrides)
    pairs = run_pairs(cfg, args.limit)
    judge = cfg.judge.model or cfg.model
    skipped = {}
    if not same_model(judge, cfg.model):
        skipped["self"] = (f"the judge ({judge}) is not the run's policy ({cfg.model}): the pairs are not its own "
                           "responses")
    return {"pairs": pairs, "judge": judge, "engine": lambda: _engine(cfg, judge),
            "constitution": load_constitution(resolve_resource(cfg.constitution)), "layout": cfg.judge.layout,
            "reasoning": cfg.judge.reasoning, "seed": cfg.seed, "source": cfg.out_dir,
            "out": RunLayout(cfg.out_dir).judge_check, "skipped": skipped}


def _engine(cfg, judge: str):
    from cai_pipeline.engines import make_engine

    return make_engine(cfg, model=judge)


def _from_data(args: argparse.Namespace):
    from pathlib import Path

    from cai_pipeline.bundled import resolve_resource
    from cai_pipeline.constitution import load_constitution
    from cai_pipeline.engines import make_engine
    from cai_pipeline.judge_check.inputs import data_pairs
    from cai_pipeline.store import JudgeCheckLayout, replace_problem

    if not args.out:
        raise UserError("--out: required with --data: the folder to write summary.json, README.md and shifts.png to")
    problem = replace_problem(Path(args.out).expanduser())  # a new or empty folder, or an earlier check's
    if problem:
        raise UserError(f"--out: {args.out} {problem}; choose a new or empty folder")
    if args.overrides:
        raise UserError(f"{args.overrides[0]}: key=value overrides go with a run config; with --data use the options "
                        "(--model, --engine, --base-url, --constitution, ...)")
    if args.engine == "openai" and not args.base_url:
        raise UserError("--base-url: required with --engine openai, e.g. --base-url http://127.0.0.1:8000/v1")
    pairs = data_pairs(args.data, args.limit, args.benign)  # a bad file fails here, before a model loads
    options = {"base_url": args.base_url} if args.base_url else {}
    return {"pairs": pairs, "judge": args.model,
            "engine": lambda: make_engine(kind=args.engine, model=args.model, seed=args.seed, **options),
            "constitution": load_constitution(resolve_resource(args.constitution)), "layout": args.layout,
            "reasoning": args.reasoning, "seed": args.seed, "source": args.data,
            "out": JudgeCheckLayout(Path(args.out).expanduser()), "skipped": {}}


def _cmd_judge_check(args: argparse.Namespace) -> int:
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.judge_check.files import write_check
    from cai_pipeline.judge_check.inputs import attach_other
    from cai_pipeline.judge_check.profile import Options, run_check
    from cai_pipeline.store import mark_folder
    from cai_pipeline.templates import TemplateSet

    quiet_libraries()
    if bool(args.config) == bool(args.data):
        raise UserError("judge-check: give a run config (the run's judge on its pairs) or --data FILE, not both"
                        if args.config else "judge-check: give a run config, e.g. configs/demo.yaml, or --data FILE")
    job = _from_data(args) if args.data else _from_run(args)
    if args.other and "self" not in job["skipped"]:
        attach_other(job["pairs"], args.other)
    c = job["constitution"]
    if args.principles > len(c.judged()):
        raise UserError(f"--principles {args.principles}: {c.name} has {len(c.judged())} principles with a comparison")
    opts = Options(k=args.principles, seed=job["seed"], templates=TemplateSet.for_constitution(c),
                   layout=job["layout"], reasoning=job["reasoning"], bootstrap=args.bootstrap,
                   probes=args.probes, skipped={k: v for k, v in job["skipped"].items() if k in args.probes})
    engine = job["engine"]()
    try:
        summary = run_check(engine, job["pairs"], c.judged(), judge=job["judge"], source=str(job["source"]),
                            opts=opts)
    finally:
        engine.close()
    write_check(job["out"], summary)
    mark_folder(job["out"].root)  # ours now: a later check may write here again
    _print(summary, job["out"])
    return 0


def _print(summary, layout) -> None:
    from rich.console import Console
    from rich.table import Table

    from cai_pipeline.judge_check.files import rows

    table = Table(title=f"judge check: {summary.judge}", title_justify="left")
    for col in ("probe", "shift", "interval", "pairs", ""):
        table.add_column(col, justify="left" if col == "probe" else "right", no_wrap=True)
    for row in rows(summary):
        table.add_row(*row)
    console = Console()
    console.print(table)
    for name, why in summary.skipped.items():
        console.print(f"not run: {name}: {why}", markup=False, highlight=False)
    flagged = summary.flagged()
    console.print(f"flagged: {', '.join(flagged) if flagged else 'nothing'}; {summary.cost.judge_calls} judge calls "
                  f"in {summary.cost.seconds} s", markup=False, highlight=False)
    console.print(f"files: {layout.root} (summary.json, README.md, shifts.png); how to read it: docs/judge-check.md",
                  markup=False, highlight=False)


def register(sub: argparse._SubParsersAction) -> None:
    from cai_pipeline.judge_check.probes import PROBES

    p = sub.add_parser(
        "judge-check",
        help="probe the judge for biases (position, length, markdown, caveats, authority, 'revised', refusal, "
        "self) with intervals",
        description="Change one response of each pair along one axis and measure how the judge's preference for "
        "it moves. With a run config: the run's judge on the run's pairs, into <out_dir>/judge-check/. With "
        "--data: a judge (--model, --engine) on labelled pairs, into --out. See docs/judge-check.md.",
    )
    p.add_argument("config", nargs="?", help="a run config YAML, e.g. configs/demo.yaml (or use --data)")
    add_overrides(p, "judge.model=... engine.kind=openai")
    p.add_argument("--data", help="hh-rlhf .jsonl(.gz), or JSONL/Parquet with prompt/chosen/rejected")
    p.add_argument("--out", help="with --data: the folder to write summary.json, README.md and shifts.png to")
    p.add_argument("--model", default="embedded", help="with --data: the judge: 'embedded', a folder, a served name")
    p.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf", "openai"], help="with --data")
    p.add_argument("--base-url", help="with --data and --engine openai: the server's URL")
    p.add_argument("--constitution", default="constitutions/harmless.yaml",
                   help="with --data: whose comparison questions to ask")
    p.add_argument("--layout", default="question_first", choices=["question_first", "shared_prefix"],
                   help="with --data: the judge prompt's layout")
    p.add_argument("--reasoning", action="store_true", help="with --data: chain of thought first")
    p.add_argument("--seed", type=int, default=0, help="with --data: seeds the principle draws and the bootstrap")
    p.add_argument("--benign", action="store_true", help="with --data: every prompt is benign (runs the refusal probe)")
    p.add_argument("--limit", type=_positive, help="probe N pairs (drawn by hashed id, the same N every time)")
    p.add_argument("--principles", type=_positive, default=2, help="principles drawn per pair (k)")
    p.add_argument("--bootstrap", type=_positive, default=1000, help="bootstrap resamples of the prompts")
    p.add_argument("--probes", type=_probes, default=list(PROBES), help=f"a subset of {','.join(PROBES)}")
    p.add_argument("--other", help="another model's responses to the same prompts (JSONL/Parquet/CSV with prompt "
                   "and response): runs the self probe")
    p.set_defaults(func=_cmd_judge_check)
