"""Shared helpers for the benchmarks: machine description, peak RSS, result files."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{len(os.sched_getaffinity(0))} cores ({cpu}), {mem:.0f} GiB RAM, no GPU" if not _cuda() else f"{cpu} + CUDA"


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def load_average() -> float:
    return os.getloadavg()[0]


def peak_rss_gib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_child(module_args: list[str]) -> dict:
    """Run one measurement in a fresh process (clean peak RSS, no shared engine state); it prints JSON last."""
    out = subprocess.run([sys.executable, *module_args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{module_args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def bench_prompts(n: int) -> list[list[dict]]:
    """n single-turn prompts: the hh-rlhf harmless test's first Human turns where present, else the bundled set."""
    from cai_pipeline.inputs import load_prompts

    hh = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
    loaded = load_prompts(str(hh) if hh.exists() else None, limit=n)
    return [r["prompt"] for r in loaded.rows]
