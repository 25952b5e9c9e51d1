"""The embedded judge's bias profile on a small demo run, and what it costs next to the judge stage.

A run of configs/demo.yaml on a hashed slice of the bundled *audit* prompts (prompts.part 0 of --parts: they
carry `harmful` / `benign` tags, so the refusal probe has benign prompts to run on), stages sample → pairs → judge only (no revisions: the probes need pairs,
not revision chains), n samples per prompt. Then `cai judge-check` on the same config: every probe on every
pair the run made. Both are separate commands, as a user runs them; each starts its own engine.

Reported: the judge stage's seconds and judge calls (conversations scored: pairs x k x 2 orders), the check's,
the ratio, and the profile. The `self` probe needs another model's responses to the same prompts, which this
machine has no model for, so it is not run.

    .venv/bin/python bench/judge_check.py                        # ~20 prompts (part 0 of 5) x 1 pair
    .venv/bin/python bench/judge_check.py --parts 40 --n 2       # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import load_average, machine, save  # noqa: E402


def cai(*args: str) -> float:
    """Run `cai ARGS` from this checkout; its wall seconds (engine start included)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "cai_pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"cai {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    print(out.stdout[-3000:])
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, default=5, help="use part 0 of this many of the 99 audit prompts")
    ap.add_argument("--n", type=int, default=2, help="samples per prompt: n(n-1)/2 sampled pairs each")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", default="judge-check")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="judge-check-bench-")) / "run"
    overrides = [f"out_dir={folder}", "prompts.path=cai_pipeline/data/audit_prompts.jsonl", "prompts.limit=null",
                 "prompts.part=0", f"prompts.parts={args.parts}", f"sample.n={args.n}", f"sample.max_tokens={args.max_tokens}",
                 "pairs.revision=false", "stages=[sample,pairs,judge]"]
    load_before = load_average()
    run_wall = cai("run", "configs/demo.yaml", *overrides, "--no-report")
    check_wall = cai("judge-check", "configs/demo.yaml", *overrides)
    manifest = json.loads((folder / "manifest.json").read_text())
    summary = json.loads((folder / "judge-check" / "summary.json").read_text())
    judge = manifest["stages"]["judge"]
    judge_calls = judge["in"] * 2 * 2  # pairs x judge.principles (2 in demo.yaml) x both orders
    result = {
        "machine": machine(), "load_before": round(load_before, 2), "load_after": round(load_average(), 2),
        "prompts": summary["settings"]["prompts"], "n": args.n, "pairs": summary["settings"]["pairs"],
        "judge_stage": {"seconds": judge["seconds"], "judge_calls": judge_calls, "run_wall_s": round(run_wall, 1)},
        "judge_check": {**summary["cost"], "wall_s": round(check_wall, 1)},
        "ratio_calls": round(summary["cost"]["judge_calls"] / judge_calls, 2),
        "ratio_seconds": round(summary["cost"]["seconds"] / judge["seconds"], 2),
        "profile": summary["probes"], "skipped": summary["skipped"], "flagged": [
            k for k, v in summary["probes"].items() if v["flagged"]],
    }
    print(json.dumps(result, indent=2))
    print(f"results: {save(args.out, result)}")


if __name__ == "__main__":
    main()
