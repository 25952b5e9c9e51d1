"""`cai report RUN [-o FILE]` and `cai show RUN PROMPT_ID`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_report(args: argparse.Namespace) -> int:
    from cai_pipeline.report import write_report

    path = write_report(args.run, args.out, force=args.force)
    print(f"report: {path} (open it in a browser: it is one file and loads nothing from anywhere)")
    if args.review_files:
        _review_files(args.run, Path(args.review_files).expanduser())
    return 0


def _review_files(run: str, folder: Path) -> None:
    """The Review tab's sample as files for Label Studio and Argilla (report/review.py)."""
    from cai_pipeline.errors import UserError
    from cai_pipeline.report import build_document
    from cai_pipeline.report.review import write_review_files

    review = build_document(run)[0]["review"]
    if review is None:
        raise UserError(f"--review-files: {run} has no judged pairs to review; run the judge stage first")
    paths = write_review_files(folder, review["items"], review["run"], review["judge"])
    print(f"review files: {len(review['items'])} verdicts in {folder} ({', '.join(str(p.relative_to(folder)) for p in paths)})")


def _cmd_show(args: argparse.Namespace) -> int:
    from cai_pipeline.report.show import show

    show(args.run, args.prompt_id)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write the run's report.html: overview and a trace viewer, one offline file",
                       description="Write RUN/report.html (or -o FILE): the stage funnel, the judge, the datasets, "
                       "training curves, the audit and rounds when present, and every prompt's trace from its "
                       "samples through critiques, revisions and verdicts to its dataset row or reject. `cai run` "
                       "writes it at the end of every run.")
    p.add_argument("run", help="a run folder (out_dir)")
    p.add_argument("-o", "--out", help="write here instead of RUN/report.html (an existing file only if it is a "
                   "report of ours, or with --force)")
    p.add_argument("--force", action="store_true", help="overwrite -o FILE even if it is not a report of ours")
    p.add_argument("--review-files", metavar="DIR", help="also write the Review tab's verdicts for Label Studio "
                   "(tasks.json, config.xml) and Argilla (records.jsonl) into DIR")
    p.set_defaults(func=_cmd_report)
    s = sub.add_parser("show", help="one prompt's trace in the terminal: samples, rounds, verdicts, dataset rows",
                       description="Print the trace of PROMPT_ID (or a unique prefix of it): the prompt, each sample, "
                       "each critique/revision round with a word diff, the pairs and the judge's verdicts in both "
                       "orders, and the dataset row or reject each became.")
    s.add_argument("run", help="a run folder (out_dir)")
    s.add_argument("prompt_id", help="a prompt_id, or the start of one")
    s.set_defaults(func=_cmd_show)
