"""`cai report RUN [-o FILE]` and `cai show RUN PROMPT_ID`."""

from __future__ import annotations

import argparse


def _cmd_report(args: argparse.Namespace) -> int:
    from cai_pipeline.report import write_report

    path = write_report(args.run, args.out, force=args.force)
    print(f"report: {path} (open it in a browser: it is one file and loads nothing from anywhere)")
    return 0


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
    p.set_defaults(func=_cmd_report)
    s = sub.add_parser("show", help="one prompt's trace in the terminal: samples, rounds, verdicts, dataset rows",
                       description="Print the trace of PROMPT_ID (or a unique prefix of it): the prompt, each sample, "
                       "each critique/revision round with a word diff, the pairs and the judge's verdicts in both "
                       "orders, and the dataset row or reject each became.")
    s.add_argument("run", help="a run folder (out_dir)")
    s.add_argument("prompt_id", help="a prompt_id, or the start of one")
    s.set_defaults(func=_cmd_show)
