"""What trusting nothing damaged costs: the checks every run makes before it reads a run folder (each file's size
and each Parquet footer), and `cai verify`'s full read (sha256 of every byte), side by side with what a resume
reads anyway (every shard's stats) and with export's own read of every shard.

The run folder is planted, not generated (no model): sample, revise, pairs and judge shards of realistic rows
(64 rows a shard, texts of ~600 characters), written by the store as a run writes them. Each measurement
alternates with the others REPS times and keeps its best (least disturbed) time.

    .venv/bin/python bench/integrity.py            # 4 stages x 200 shards; results in bench/results/integrity.json
    .venv/bin/python bench/integrity.py 20         # a smoke run: 20 shards a stage
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_average, machine, save  # noqa: E402

ROWS, REPS = 64, 3
WORDS = "the a harm help safe answer user model reply kind rude fair law risk care".split()


def text(rng: random.Random, n: int = 100) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def plant(root: Path, shards: int) -> None:
    from cai_pipeline import records
    from cai_pipeline.store import RunStore

    store, rng = RunStore(root), random.Random(0)
    store.write_manifest({"package": "cai-pipeline", "stages": {}})
    prompt = [{"role": "user", "content": text(rng, 20)}]
    for i in range(shards):
        sample = [{"prompt_id": f"p{i}-{r}", "sample_idx": 0, "prompt": prompt, "response": text(rng),
                   "finish_reason": "stop", "n_tokens": 100} for r in range(ROWS)]
        rounds = [{"principle_id": "harm", "critique": text(rng, 40), "revision": text(rng), "cleaned": False,
                   "kept_previous": None, "truncated": False}]
        revise = [{**{k: s[k] for k in ("prompt_id", "sample_idx", "prompt")}, "initial": s["response"],
                   "initial_truncated": False, "rounds": rounds, "final": text(rng), "final_truncated": False}
                  for s in sample]
        pairs = [{"pair_id": f"x{i}-{r}", "prompt_id": s["prompt_id"], "prompt": prompt, "a": s["response"],
                  "b": text(rng), "origin": "revision", "a_idx": 0, "b_idx": -1, "a_truncated": False,
                  "b_truncated": False, "revision_principle_ids": ["harm"]} for r, s in enumerate(sample)]
        for stage, rows, model in (("sample", sample, records.SampleRecord), ("revise", revise, records.ReviseRecord),
                                   ("pairs", pairs, records.PairRecord)):
            store.write_shard(stage, i, rows, model, [], {"in": ROWS, "out": ROWS})


def best(fn, reps: int = REPS) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from cai_pipeline import integrity
    from cai_pipeline.store import RunStore

    shards = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as tmp:
        root = Path(tmp) / "run"
        plant(root, shards)
        store = RunStore(root)
        stages = ("sample", "revise", "pairs")
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        measured = {
            "stats_read": best(lambda: [store.shard_stats(s) for s in stages]),
            "quick_check": best(lambda: integrity.damaged_shards(store)),
            "full_verify": best(lambda: integrity.verify(store)),
            "read_every_shard": best(lambda: [store.read_stage(s) for s in stages]),
        }
    result = {"machine": machine(), "load_average": round(load_average(), 2), "shards": shards * len(stages),
              "rows_per_shard": ROWS, "folder_mib": round(size / 2**20, 1),
              "seconds": {k: round(v, 4) for k, v in measured.items()},
              "quick_check_per_shard_ms": round(1000 * measured["quick_check"] / (shards * len(stages)), 3),
              "quick_check_vs_stats_read": round(measured["quick_check"] / measured["stats_read"], 2),
              "quick_check_vs_read_every_shard": round(measured["quick_check"] / measured["read_every_shard"], 3),
              "full_verify_vs_read_every_shard": round(measured["full_verify"] / measured["read_every_shard"], 2)}
    print(result)
    if shards >= 200:
        save("integrity", result)


if __name__ == "__main__":
    main()
