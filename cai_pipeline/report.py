"""What the user sees while a run goes and when it ends: a progress bar per stage and a summary table."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)


def quiet_libraries() -> None:
    """vLLM and transformers log a great deal at INFO; our own progress bars say what matters."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
        console=console, disable=not sys.stderr.isatty() and os.environ.get("CAI_PROGRESS") != "1",
    )


def summary_table(manifest: dict) -> Table:
    table = Table(title=f"run {manifest.get('out_dir', '')}", title_justify="left")
    for col in ("stage", "in", "out", "rejected", "tokens", "wall s", "reasons"):
        table.add_column(col, justify="left" if col in ("stage", "reasons") else "right")
    for name, s in manifest.get("stages", {}).items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.get("rejected", {}).items()))
        table.add_row(name, str(s.get("in", "")), str(s.get("out", "")), str(sum(s.get("rejected", {}).values())),
                      str(s.get("output_tokens", "")), f"{s.get('seconds', 0):.1f}", reasons)
    return table


def print_summary(manifest: dict) -> None:
    console.print(summary_table(manifest))
    for line in manifest.get("outputs", []):
        console.print(f"  {line}")
