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
from cai_pipeline.report.page import GENERATOR, render
from cai_pipeline.store import atomic_write_text, check_output_file, file_starts_with

__all__ = ["build_document", "is_report", "write_report"]


def is_report(path: Path) -> bool:
    """A report this project wrote: its page carries our generator tag near the top."""
    return file_starts_with(path, GENERATOR.encode())


def write_report(run_dir: str | Path, out: str | Path | None = None, *, force: bool = False) -> Path:
    """Write the report of the run folder `run_dir` (atomically) and return its path. An existing file there is
    replaced only if it is a report of ours, or with `force`."""
    target = Path(out) if out else open_run(run_dir).layout.report
    check_output_file(target, "-o" if out else "report", ours=is_report, what="a report cai-pipeline wrote",
                      force=force)
    doc, traces = build_document(run_dir)
    atomic_write_text(target, render(doc, traces))
    return target
