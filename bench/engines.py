"""Engines side by side: the same 32 prompts × n=2 × 128 tokens through vLLM and transformers.

Reports output tokens/s of each, their ratio, peak RSS and start time (each engine in its own process),
and the sampling stage's wall time over the raw `Engine.generate` time on the same batch (the stage should
add no real overhead: Parquet write, manifest, rejects). Both sample with the model's bf16 output head (their
fp32 head is for scoring choices only).

    .venv/bin/python bench/engines.py            # both engines, results in bench/results/engines.json
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_prompts, load_average, machine, peak_rss_gib, run_child, save  # noqa: E402

N_PROMPTS, N, MAX_TOKENS, SEED = 32, 2, 128, 0


def measure(kind: str) -> dict:
    from cai_pipeline.config import load_config
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.engines import GenParams, make_engine
    from cai_pipeline.records import SampleRecord
    from cai_pipeline.stages import sample
    from cai_pipeline.stages.base import StageContext
    from cai_pipeline.store import RunStore

    quiet_libraries()
    convs = bench_prompts(N_PROMPTS)
    start = time.perf_counter()
    engine = make_engine(kind=kind, model="embedded", batch_size=64)
    started = time.perf_counter() - start
    engine.generate(convs[:2], GenParams(max_tokens=8))  # warm-up
    cfg = load_config(None, ["out_dir=unused", f"sample.n={N}", f"sample.max_tokens={MAX_TOKENS}"])
    rows = [{"prompt_id": f"p{i}", "prompt": c} for i, c in enumerate(convs)]
    raw, stage, tokens = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(tmp)
        for rep in range(2):  # alternate, so drift in machine load hits both alike
            ctx = StageContext(seed=SEED, shard=rep, cfg=cfg)
            same = sample.params_for(cfg, ctx.call_seed("sample"))  # the stage's own call: identical output
            before = engine.stats.output_tokens
            t = time.perf_counter()
            engine.generate(convs, same)
            raw.append(time.perf_counter() - t)
            tokens = engine.stats.output_tokens - before
            t = time.perf_counter()
            result = sample.run({"prompts": rows}, engine, ctx)
            store.write_shard("sample", rep, result.rows, SampleRecord, result.rejects, {})
            stage.append(time.perf_counter() - t)
    engine.close()
    return {"engine": kind, "start_s": round(started, 1), "tokens": tokens,
            "tok_per_s": round(tokens / statistics.median(raw), 1),
            "stage_over_raw": round(statistics.median(stage) / statistics.median(raw), 3),
            "peak_rss_gib": round(peak_rss_gib(), 2)}


def main() -> None:
    if len(sys.argv) > 1:  # child: one engine
        import json

        print(json.dumps(measure(sys.argv[1])))
        return
    load = load_average()
    results = {kind: run_child([__file__, kind]) for kind in ("vllm", "hf")}
    summary = {"machine": machine(), "load_avg_at_start": round(load, 2),
               "workload": f"{N_PROMPTS} prompts x n={N} x {MAX_TOKENS} max tokens, bf16", **results,
               "vllm_over_hf": round(results["vllm"]["tok_per_s"] / results["hf"]["tok_per_s"], 2)}
    print(f"saved {save('engines', summary)}")
    for kind in results:
        r = results[kind]
        print(f"{kind:13} {r['tok_per_s']:7.1f} tok/s  start {r['start_s']:5.1f} s  peak RSS {r['peak_rss_gib']:.2f} GiB"
              f"  stage/raw {r['stage_over_raw']:.3f}")
    print(f"vLLM / transformers: {summary['vllm_over_hf']}x")


if __name__ == "__main__":
    main()
