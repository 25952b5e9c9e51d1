"""The run report: one offline HTML page per run folder (overview, funnel, judge, datasets, training, audit,
rounds, and a trace viewer from prompt to verdict), and `cai show` for one trace in the terminal.

    write_report(run_dir)  → run_dir/report.html (or `out`): build.py gathers the folder into one document,
                             page.py embeds it safely in template.html with report.css and report.js inline.

Why the report is a step at the end of `run_pipeline` and not a stage in STAGES: it makes no data another
stage reads and has no settings, so a fingerprint would buy nothing (it takes about a second where a run
takes minutes); it must describe the folder as this invocation left it, whatever subset of stages ran
(`--stages sample` included: partial results are what a user wants to look at) and after the manifest's
last writes; and every command that runs stages (`cai run`, `cai train`, `cai audit`) gets it without each
config listing it. `--no-report` skips it; `cai report RUN` writes it at any time.
"""

from __future__ import annotations

from pathlib import Path

from cai_pipeline.report.build import build_document, open_run
from cai_pipeline.report.page import render
from cai_pipeline.store import atomic_write_text

__all__ = ["build_document", "write_report"]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the run folder `run_dir` (atomically) and return its path."""
    target = Path(out) if out else open_run(run_dir).layout.report
    doc, traces = build_document(run_dir)
    atomic_write_text(target, render(doc, traces))
    return target
