"""What a resumable state costs: seconds per save, its size, and its share of the time at save_every=50.

    .venv/bin/python bench/train.py --suite state               # DPO, embedded model, 12 steps, a state every 3
    .venv/bin/python bench/train.py --suite state --smoke       # 2 steps, a state every step

Full fine-tuning of the embedded model (fp32 weights + AdamW's two moments: three copies of 135M parameters,
written with the data order, RNG and reference log-probs), batch 4 × max_length 256 hh-rlhf pairs. The share
of a run spent saving at save_every = 50 is save / (50 · step + save), from the measured means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_average, machine, peak_rss_gib, save  # noqa: E402
from bench.train import load_pairs  # noqa: E402


def measure(a) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cai_pipeline.config import RunConfig
    from cai_pipeline.models import resolve_model
    from cai_pipeline.stages.train import train_run as train

    tmp = Path(tempfile.mkdtemp(prefix="bench-state-"))
    (tmp / "prefs").mkdir()
    pq.write_table(pa.Table.from_pylist(load_pairs(a.steps * a.batch_size)), tmp / "prefs" / "train-00000.parquet")
    cfg = RunConfig.model_validate({"out_dir": str(tmp / "run"), "seed": 0, "train": {
        "model": a.model or resolve_model("embedded"), "data": str(tmp / "prefs"), "loss": "dpo", "lr": 5e-6,
        "batch_size": a.batch_size, "max_length": a.max_length, "max_prompt_length": a.max_length // 2,
        "precision": a.precision, "shuffle": False, "plots": False, "save_every": a.save_every, "keep_states": 2,
        "keep_final_state": True}})  # its size is read below
    s = train(cfg)
    state = next((tmp / "run" / "train" / "state").iterdir())
    size = sum(f.stat().st_size for f in state.iterdir()) / 2**30
    shutil.rmtree(tmp)
    per_save, per_step = s["state_seconds"] / s["states_written"], s["train_seconds"] / s["steps"]
    return {"steps": s["steps"], "states": s["states_written"], "seconds_per_save": per_save,
            "seconds_per_step": per_step, "state_gib": size, "share_at_50": per_save / (50 * per_step + per_save),
            "peak_rss_gib": peak_rss_gib()}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--model", default=None)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save-every", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.save_every, a.batch_size, a.max_length = 2, 1, 2, 64
    load = load_average()
    r = measure(a)
    print(f"{r['states']} states of {r['state_gib']:.2f} GiB: {r['seconds_per_save']:.2f} s per save, "
          f"{r['seconds_per_step']:.2f} s per step; at save_every=50 saving is {100 * r['share_at_50']:.1f}% of the run")
    if not a.smoke:
        print(f"written: {save('train-state', {'machine': machine(), 'load_average_start': load, 'args': vars(a), **r})}")
    print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1:])
