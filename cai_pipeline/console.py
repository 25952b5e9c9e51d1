"""What the user sees in the terminal while a run goes and when it ends: per-stage progress in rows, and the
summary table. (The HTML report of a run is another module.)

On a terminal, progress is a live bar. Under nohup, CI or a scheduler (stderr not a TTY) it is a plain line
per stage every CAI_PROGRESS_INTERVAL seconds (30) — rows done / total, tokens/s, ETA — so a log shows the run
is alive; a stage that ends sooner prints nothing, and the summary table closes the run.
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)
PLAIN_INTERVAL_S = float(os.environ.get("CAI_PROGRESS_INTERVAL", "30"))
_quiet = False  # set by quiet_libraries; a Ray executor passes it on to its workers


def libraries_quiet() -> bool:
    return _quiet


def quiet_libraries(verbose: bool = False) -> None:
    """vLLM and transformers log a great deal at INFO (and warn about their own deprecations); our progress
    lines say what matters. `--verbose` keeps their output."""
    global _quiet
    if verbose:
        return
    _quiet = True
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10's NUMA-binding notes, read when torch loads
    os.environ.setdefault("TORCH_LOGS", "-torch")  # torch's own loggers at ERROR ("Triton not available")
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|torch|vllm|accelerate|peft)\b.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _interactive() -> bool:
    return sys.stderr.isatty() or os.environ.get("CAI_PROGRESS") == "1"


class StageProgress:
    """One stage's progress in rows: `advance(rows, tokens)` as rows finish; `close()` at the end."""

    def __init__(self, name: str, total: int, done: int = 0, interval: float | None = None):
        self.name, self.total, self.done, self.tokens = name, total, done, 0
        self.start = self.last = time.monotonic()
        self.first_done, self.interval = done, PLAIN_INTERVAL_S if interval is None else interval
        self.bar = None
        if _interactive():
            self.bar = Progress(TextColumn("[bold]{task.description:<7}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("rows"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                console=console, transient=False)
            self.task = self.bar.add_task(name, total=total, completed=done, rate="")
            self.bar.start()

    def advance(self, rows: int, tokens: int = 0) -> None:
        self.done, self.tokens = min(self.total, self.done + rows), self.tokens + tokens
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=self._rate())
        elif time.monotonic() - self.last >= self.interval:
            self._line()

    def _rate(self) -> str:
        elapsed = time.monotonic() - self.start
        return f"{self.tokens / elapsed:.0f} tok/s" if self.tokens and elapsed > 0 else ""

    def _line(self) -> None:
        self.last = time.monotonic()
        elapsed, new = self.last - self.start, self.done - self.first_done
        parts = [f"{self.name}: {self.done}/{self.total} rows"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        if self._rate():
            parts.append(self._rate())
        if new > 0 and self.done < self.total:
            parts.append(f"ETA {_duration(elapsed / new * (self.total - self.done))}")
        parts.append(f"{_duration(elapsed)} elapsed")
        print(", ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class TrainProgress:
    """Training's progress: a plain line `train: step 12/200 (6%), loss 0.6931, 0.41 s/step, ETA …` every
    PLAIN_INTERVAL_S seconds (every 2 s on a terminal) and at the last step, on stderr, from one process
    only — so a log under nohup or a scheduler shows a long training is alive, as the stages' lines do."""

    def __init__(self, total: int, done: int = 0, interval: float | None = None, show: bool = True):
        self.total, self.first, self.show = total, done, show
        self.interval = (2.0 if _interactive() else PLAIN_INTERVAL_S) if interval is None else interval
        self.start = self.last = time.monotonic()

    def step(self, step: int, loss: float) -> None:
        now = time.monotonic()
        if not self.show or (now - self.last < self.interval and step < self.total):
            return
        self.last, elapsed, new = now, now - self.start, step - self.first
        parts = [f"train: step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%)", f"loss {loss:.4f}"]
        if new > 0:
            parts.append(f"{elapsed / new:.2f} s/step")
            if step < self.total:
                parts.append(f"ETA {_duration(elapsed / new * (self.total - step))}")
        parts.append(f"{_duration(elapsed)} elapsed")
        print(", ".join(parts), file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The summary


def _run_stage_figures(entry: dict, line) -> tuple[str, str]:
    """(out, details) for a run-scope stage: its own `summary_line` of its summary, else the summary's numbers."""
    summary = entry.get("summary", {})
    shown = line(summary) if line else None
    if shown is not None:
        return shown
    return "", ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int | float | str))[:80]


def summary_table(manifest: dict, root: str, statuses: dict[str, str], lines: dict | None = None) -> Table:
    """Every stage of this invocation in pipeline order; `statuses` says which ran and which were done;
    `lines`: a run-scope stage's (out, details) formatter by name (its Stage.summary_line)."""
    table = Table(title=f"run {root}", title_justify="left")
    for col in ("stage", "status", "in", "out", "rejected", "tokens", "wall s", "details"):
        table.add_column(col, justify="left" if col in ("stage", "status", "details") else "right")
    for name, status in statuses.items():
        s = manifest.get("stages", {}).get(name, {})
        if "shards_total" in s:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.get("rejected", {}).items()))
            table.add_row(name, status, str(s.get("in", "")), str(s.get("out", "")),
                          str(sum(s.get("rejected", {}).values())), str(s.get("output_tokens", "")),
                          f"{s.get('seconds', 0):.1f}", reasons)
        else:
            out, details = _run_stage_figures(s, (lines or {}).get(name))
            table.add_row(name, status, "", out, "", "", f"{s.get('seconds', 0):.1f}", details)
    return table


def print_summary(manifest: dict, root: str, statuses: dict[str, str], lines: dict | None = None) -> None:
    console.print(summary_table(manifest, root, statuses, lines))
    for line in manifest.get("outputs", []):
        console.print(f"  {line}")
