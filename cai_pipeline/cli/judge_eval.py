"""`cai judge-eval`: the judge on human-labelled pairs (cai_pipeline/judge_eval.py), as a table and JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cai_pipeline.errors import UserError
from cai_pipeline.judge_eval import evaluate_labelled, format_table, read_labelled
from cai_pipeline.store import atomic_write_text, check_output_file


def _cmd_review(args: argparse.Namespace) -> int:
    """--data is a Review tab export: the person's labels against the run judge's recorded verdicts."""
    from cai_pipeline.judge_eval import evaluate_review, format_review

    report = evaluate_review(Path(args.data).expanduser())
    print(format_review(report))
    _write(args, report)
    return 0


def _write(args: argparse.Namespace, report: dict) -> None:
    if args.out:
        atomic_write_text(Path(args.out).expanduser(), json.dumps({"generator": GENERATOR, **report}, indent=2) + "\n")
        print(f"report written to {args.out}")
    if args.plot:
        from cai_pipeline.agreement import reliability_plot

        reliability_plot(report["agreement"], Path(args.plot).expanduser())
        print(f"reliability plot written to {args.plot}")


def _cmd_judge_eval(args: argparse.Namespace) -> int:
    from cai_pipeline.report.review import is_review_file

    for flag, option in (("--out", args.out), ("--plot", args.plot)):
        if option and not Path(option).expanduser().resolve().parent.is_dir():
            raise UserError(f"{flag}: the folder of {option} does not exist; create it or choose another path")
    if args.out:  # before a model loads: never over a file that is not an earlier judge-eval report of ours
        check_output_file(Path(args.out).expanduser(), "--out", ours=_is_ours, what="a judge-eval report",
                          force=args.force)
    if is_review_file(Path(args.data).expanduser()):
        return _cmd_review(args)
    return _cmd_labelled(args)


def _cmd_labelled(args: argparse.Namespace) -> int:
    from cai_pipeline.bundled import resolve_resource
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.constitution import load_constitution
    from cai_pipeline.engines import make_engine
    from cai_pipeline.templates import TemplateSet

    quiet_libraries()
    labelled, skipped = read_labelled(args.data, args.limit)  # a bad file fails here, before a model loads
    if args.engine == "openai" and not args.base_url:
        raise UserError("--base-url: required with --engine openai, e.g. --base-url http://127.0.0.1:8000/v1")
    constitution = load_constitution(resolve_resource(args.constitution))
    options = {"base_url": args.base_url} if args.base_url else {}
    engine = make_engine(kind=args.engine, model=args.model, seed=args.seed, **options)
    try:
        report = evaluate_labelled(labelled, skipped, engine, constitution.judged(), k=args.principles,
                                   reasoning=args.reasoning, seed=args.seed, layout=args.layout,
                                   templates=TemplateSet.for_constitution(constitution))
    finally:
        engine.close()
    report = {"data": args.data, "model": args.model, "engine": engine.name, "constitution": constitution.name,
              "principles": args.principles, "reasoning": args.reasoning, "layout": args.layout, "seed": args.seed,
              **report}
    print(format_table(report))
    _write(args, report)
    return 0


GENERATOR = "cai-pipeline judge-eval"  # in every report --out writes: what may be overwritten without --force


def _is_ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge-eval", help="measure the judge against human preference labels (agreement, Cohen's "
                       "κ, calibration, order consistency, position bias)",
                       description="Judge labelled pairs with a model and compare with the people's choice; or, "
                       "given the labels exported from a run report's Review tab, compare them with the run judge's "
                       "recorded verdicts (no model is loaded). See docs/judge-check.md.")
    p.add_argument("--data", required=True, help="hh-rlhf .jsonl(.gz), JSONL/Parquet with prompt/chosen/rejected, "
                   "or a Review tab export (review-*.jsonl)")
    p.add_argument("--limit", type=_positive, help="judge only the first N usable rows")
    p.add_argument("--model", default="embedded", help="judge model: 'embedded', a local folder, or a served name")
    p.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf", "openai"])
    p.add_argument("--base-url", help="engine openai: the server's URL, e.g. http://localhost:8000/v1")
    p.add_argument("--constitution", default="constitutions/harmless.yaml", help="whose comparison questions to ask")
    p.add_argument("--principles", type=_positive, default=2, help="principles drawn per pair (k)")
    p.add_argument("--reasoning", action="store_true", help="chain-of-thought first, probabilities clamped to [0.4, 0.6]")
    p.add_argument("--layout", default="question_first", choices=["question_first", "shared_prefix"],
                   help="judge prompt layout (judge.layout): the question first, or the responses first")
    p.add_argument("--seed", type=int, default=0, help="seeds the principle draws and which side is shown first")
    p.add_argument("--out", help="also write the report as JSON to this file (an existing file only if it is an "
                   "earlier judge-eval report, or with --force)")
    p.add_argument("--plot", help="also write the reliability plot (the judge's p against people's choices) as PNG")
    p.add_argument("--force", action="store_true", help="overwrite --out FILE whatever it holds")
    p.set_defaults(func=_cmd_judge_eval)
