"""Data-parallel training on this CPU box: 2 processes × 1 thread against 1 process × 2 threads.

    .venv/bin/python bench/train.py --suite ddp                 # DPO, embedded model, 64 pairs, global batch 4
    .venv/bin/python bench/train.py --suite ddp --smoke         # 8 pairs, max_length 64

The same global batch either way (per-process batch 2 × 2 processes, or batch 4 × 1), fp32, the same hh-rlhf
pairs, `cai train` from a shell as a user runs it. pairs/s is over the training loop (rank 0's clock: model
loading, tokenisation and the reference pass excluded); peak RSS is the largest single process's (each worker
holds a whole model, optimizer and gradients, so two processes need about twice the memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_average, machine, save  # noqa: E402
from bench.train import load_pairs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Runs one `cai train` and reports the peak RSS of the largest process under it (ru_maxrss of waited-for
# descendants is the largest one's, not a sum).
WRAPPER = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")


def run_cli(config: Path, out: Path, *, nproc: int, threads: int, batch: int) -> dict:
    cmd = [sys.executable, "-m", "cai_pipeline.cli", "train", str(config), f"out_dir={out}",
           f"train.batch_size={batch}", "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CAI_HOME": tempfile.mkdtemp(prefix="bench-cai-home-")}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], cwd=REPO, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"cai train --nproc {nproc} failed:\n{done.stderr[-4000:]}")
    summary = json.loads((out / "train" / "summary.json").read_text())
    return {"pairs_per_s": summary["examples_per_s"], "train_seconds": summary["train_seconds"],
            "peak_rss_gib_per_process": int(done.stdout.strip().splitlines()[-1]) / 2**20,
            "final_loss": summary["final_loss"]}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--max-length", type=int, default=256)
    a = p.parse_args(argv)
    if a.smoke:
        a.pairs, a.max_length = 8, 64
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cai_pipeline.models import resolve_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    (tmp / "prefs").mkdir()
    pq.write_table(pa.Table.from_pylist(load_pairs(a.pairs)), tmp / "prefs" / "train-00000.parquet")
    config = tmp / "run.yaml"
    config.write_text(f"model: {a.model or resolve_model('embedded')}\ntrain:\n  data: {tmp / 'prefs'}\n  loss: dpo\n"
                      f"  lr: 5.0e-6\n  max_length: {a.max_length}\n  max_prompt_length: {a.max_length // 2}\n"
                      "  precision: fp32\n  shuffle: false\n  plots: false\n  save_every: null\n")
    load = load_average()
    one = run_cli(config, tmp / "one", nproc=1, threads=2, batch=4)
    two = run_cli(config, tmp / "two", nproc=2, threads=1, batch=2)
    ratio = two["pairs_per_s"] / one["pairs_per_s"]
    print(f"1 process × 2 threads: {one['pairs_per_s']:.3f} pairs/s, {one['peak_rss_gib_per_process']:.2f} GiB; "
          f"2 processes × 1 thread: {two['pairs_per_s']:.3f} pairs/s, {two['peak_rss_gib_per_process']:.2f} GiB each "
          f"→ ×{ratio:.2f}; final loss {one['final_loss']:.6f} vs {two['final_loss']:.6f}")
    if not a.smoke:
        print(f"written: {save('train-ddp', {'machine': machine(), 'load_average_start': load, 'args': vars(a), 'one': one, 'two': two, 'ratio': ratio})}")


if __name__ == "__main__":
    main(sys.argv[1:])
