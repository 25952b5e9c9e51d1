"""How long `cai run` takes to exit after Ctrl-C inside revise on vLLM (both revise.mode), with stack dumps 1 s and
3 s after the signal to show what it is doing meanwhile.

    .venv/bin/python bench/interrupt.py                      # this checkout; results in bench/results/interrupt.json
    .venv/bin/python bench/interrupt.py --repo /path/to/main # another checkout (bench/results/interrupt-main.json)

SIGINT goes to the process group (as a terminal sends it) 2 s after the sample shard lands; a process still
running 120 s later is killed and counted as not exiting.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_average, machine, save  # noqa: E402

CHILD = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1); "
         "from cai_pipeline.cli import main; sys.exit(main(sys.argv[1:]))")


def interrupted(repo: Path, out: Path, mode: str, delay: float = 2.0) -> dict:
    log = out.with_suffix(".log")
    cmd = [sys.executable, "-c", CHILD, "run", "configs/demo.yaml", f"out_dir={out}", "prompts.limit=6",
           "sample.max_tokens=16", "revise.max_tokens=96", "revise.rounds=2", f"revise.mode={mode}",
           "revise.few_shot=0", "engine.kind=vllm", "engine.kv_cache_gb=1", "stages=[sample,revise]", "--no-report"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(repo)})
    while not (out / "sample" / "part-00000.parquet").exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before revise:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    time.sleep(delay)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    for at in (1, 3):  # what the process does meanwhile, into its log
        time.sleep(at - (time.monotonic() - sent))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGUSR1)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = None
    text = log.read_text(errors="replace")
    return {"exit": code, "seconds": round(time.monotonic() - sent, 1) if code is not None else None,
            "said_interrupted": "interrupted; run the same command again to resume" in text,
            "invalid_state": "InvalidStateError" in text}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    a = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-interrupt-") as tmp:
        for mode in ("chains", "rounds"):
            results[mode] = interrupted(a.repo.resolve(), Path(tmp) / mode, mode)
            print(mode, results[mode], flush=True)
    here = a.repo.resolve() == Path(__file__).resolve().parent.parent
    save("interrupt" if here else f"interrupt-{a.repo.resolve().name}",
         {"machine": machine(), "load_average": round(load_average(), 2), "repo": str(a.repo), "results": results})


if __name__ == "__main__":
    main()
