"""Reliability costs: what shards + atomic writes cost, how long a finished run takes to resume, and what the
OpenAI engine against a local vLLM server gives up next to the offline vLLM engine.

1. Overhead: the same sample → revise → pairs work (one engine, same shards, same seeds) through
   `run_pipeline` (Parquet shards written atomically, fsynced, a manifest after every shard) and as a plain
   in-memory pass over the same shards. Wall times are noisy on a shared machine, so the store's own time
   (every write, read and manifest, timed inside the run) is reported too: that is the overhead itself.
2. Resume: `cai run` on the finished folder in a fresh process that fails if any engine is built.
3. OpenAI vs offline: the same sample + revise work through the offline vLLM engine and through
   `python -m vllm.entrypoints.openai.api_server` (engine.concurrency=64), alternating, three times each.

Other work on a shared machine slows a run by up to 10× (vLLM's OpenMP threads are bound to every core and
lose badly to oversubscription), so each side keeps its best run; note the load average with the numbers.

    .venv/bin/python bench/resume.py          # results in bench/results/resume.json
    .venv/bin/python bench/resume.py 8        # a smoke run on 8 prompts
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, bench_prompts, load_average, machine, save  # noqa: E402

N_PROMPTS, SHARD, N, MAX_TOKENS, SEED = 24, 12, 2, 64, 0
REPS = 3  # each comparison alternates its two sides REPS times and keeps each side's best (least disturbed) run
NO_ENGINE = ("import sys, cai_pipeline.engines as e\n"
             "e.make_engine = lambda *a, **k: sys.exit('an engine was started')\n"
             "from cai_pipeline.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def overrides(out: Path, prompts: Path) -> list[str]:
    return [f"out_dir={out}", f"prompts.path={prompts}", f"prompts.limit={N_PROMPTS}", f"shard_size={SHARD}",
            f"sample.n={N}", f"sample.max_tokens={MAX_TOKENS}", "revise.rounds=1", f"revise.max_tokens={MAX_TOKENS}",
            "revise.few_shot=0", "stages=[sample,revise,pairs,export]", f"seed={SEED}"]


def write_prompts(folder: Path) -> Path:
    import json

    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in bench_prompts(N_PROMPTS)))
    return path


class StoreClock:
    """Times every store write/read (the whole cost of shards on disk) while a run goes."""

    def __init__(self):
        import cai_pipeline.store as store

        self.store, self.seconds, self.saved = store, 0.0, {}
        for name in ("write_shard", "read_shard", "write_manifest", "shard_stats"):
            self.saved[name] = getattr(store.RunStore, name)
            setattr(store.RunStore, name, self._timed(self.saved[name]))

    def _timed(self, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - start
        return wrapper

    def restore(self) -> None:
        for name, fn in self.saved.items():
            setattr(self.store.RunStore, name, fn)


def stage_context(cfg, assets, shard: int):
    from cai_pipeline.stages.base import StageContext

    return StageContext(seed=cfg.seed, shard=shard, cfg=cfg, constitution=assets.constitution,
                        templates=assets.templates)


def in_memory_pass(cfg, engine) -> float:
    """The same stages over the same shards, in the same order, rows kept in memory: a run without a store."""
    from cai_pipeline.assets import load_assets
    from cai_pipeline.stages import pairs, revise, sample

    assets = load_assets(cfg)
    rows = assets.prompts.rows
    shards = range(0, -(-len(rows) // cfg.shard_size))
    start = time.perf_counter()
    samples = [sample.run({"prompts": rows[i * cfg.shard_size : (i + 1) * cfg.shard_size]}, engine,
                          stage_context(cfg, assets, i)).rows for i in shards]
    revised = [revise.run({"sample": samples[i]}, engine, stage_context(cfg, assets, i)).rows for i in shards]
    for i in shards:
        pairs.run({"sample": samples[i], "revise": revised[i]}, None, stage_context(cfg, assets, i))
    return time.perf_counter() - start


def overhead(engine, work: Path) -> dict:
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline

    prompts = write_prompts(work)
    out = {"sharded_s": [], "in_memory_s": [], "store_s": []}
    for rep in range(REPS):  # alternate, so drifting load hits both alike
        out["in_memory_s"].append(round(in_memory_pass(load_config(None, overrides(work / "x", prompts)), engine), 2))
        cfg = load_config(None, overrides(work / f"run{rep}", prompts))
        clock = StoreClock()
        start = time.perf_counter()
        run_pipeline(cfg, engine=engine, stages=["sample", "revise", "pairs"])
        out["sharded_s"].append(round(time.perf_counter() - start, 2))
        clock.restore()
        out["store_s"].append(round(clock.seconds, 3))
    sharded, memory = min(out["sharded_s"]), min(out["in_memory_s"])
    out["wall_overhead"] = round(sharded / memory - 1, 4)
    out["store_share"] = round(max(s / w for s, w in zip(out["store_s"], out["sharded_s"])), 5)
    return out


def resume_finished(work: Path) -> dict:
    """The finished run from `overhead` (export added) resumed in a fresh process that may not build an engine."""
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline

    prompts = work / "prompts.jsonl"
    run_pipeline(load_config(None, overrides(work / "run0", prompts)), stages=["export"])
    empty = work / "bench.yaml"  # no keys: the same config as load_config(None, overrides) above
    empty.write_text("# every setting comes from the command line\n")
    cmd = [sys.executable, "-c", NO_ENGINE, "run", str(empty), *overrides(work / "run0", prompts)]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=Path(__file__).resolve().parent.parent)
        times.append(round(time.perf_counter() - start, 2))
    importing = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import cai_pipeline.cli,"
                                " cai_pipeline.pipeline, transformers, pyarrow.parquet; print(time.perf_counter()-t)"],
                               capture_output=True, text=True, check=True)
    return {"resume_s": times, "median_s": statistics.median(times),
            "python_imports_s": round(float(importing.stdout.strip()), 2)}


def generation_pass(engine, cfg) -> dict:
    """Sample (one generate call) then revise (a chain per row) over all prompts: output tokens per second."""
    from cai_pipeline.assets import load_assets
    from cai_pipeline.stages import revise, sample

    assets = load_assets(cfg)
    before, start = engine.stats.output_tokens, time.perf_counter()
    samples = sample.run({"prompts": assets.prompts.rows}, engine, stage_context(cfg, assets, 0)).rows
    revised = revise.run({"sample": samples}, engine, stage_context(cfg, assets, 0))
    wall = time.perf_counter() - start
    tokens = engine.stats.output_tokens - before
    return {"wall_s": round(wall, 2), "output_tokens": tokens, "tok_per_s": round(tokens / wall, 1),
            "rows": len(revised.rows), "rejects": len(revised.rejects)}


def openai_vs_offline(offline, work: Path) -> dict:
    from cai_pipeline.config import EngineConfig, load_config
    from cai_pipeline.engines.openai import OpenAIEngine
    from cai_pipeline.models import resolve_model
    from tests.vllm_server import KEY_ENV, SERVED_NAME, start_server

    cfg = load_config(None, overrides(work / "unused", work / "prompts.jsonl"))
    started = time.perf_counter()
    server = start_server(resolve_model("embedded"))
    startup = round(time.perf_counter() - started, 1)
    os.environ[KEY_ENV] = server.key
    client = OpenAIEngine.from_config(EngineConfig(kind="openai", base_url=server.url, api_key_env=KEY_ENV,
                                                   served_model=SERVED_NAME, concurrency=64), "embedded")
    runs: dict[str, list] = {"offline": [], "openai": []}
    try:
        client.generate(bench_prompts(2), __import__("cai_pipeline.engines", fromlist=["GenParams"]).GenParams(max_tokens=4))
        for _ in range(REPS):  # alternate, so drifting load hits both alike
            runs["offline"].append(generation_pass(offline, cfg))
            runs["openai"].append(generation_pass(client, cfg))
    finally:
        client.close()
        server.stop()
    rate = {k: max(r["tok_per_s"] for r in v) for k, v in runs.items()}
    return {**runs, "server_start_s": startup, "retries": client.stats.retries,
            "throughput_ratio": round(rate["openai"] / rate["offline"], 3)}


def parse_args() -> tuple[int, set[str]]:
    """`[N_PROMPTS] [--parts overhead,resume,openai]`: a part run alone updates its entry in resume.json."""
    args, parts = sys.argv[1:], {"overhead", "resume", "openai"}
    if "--parts" in args:
        i = args.index("--parts")
        parts = set(args[i + 1].split(","))
        del args[i : i + 2]
    return (int(args[0]) if args else N_PROMPTS), parts


def main() -> None:
    global N_PROMPTS
    import json

    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.engines import GenParams, make_engine

    N_PROMPTS, parts = parse_args()
    quiet_libraries()
    previous = RESULTS / "resume.json"
    result = json.loads(previous.read_text()) if parts != {"overhead", "resume", "openai"} and previous.exists() else {}
    result.update(machine=machine(), workload=f"{N_PROMPTS} hh-rlhf prompts, shard_size {SHARD}, n={N}, "
                  f"1 revision round, {MAX_TOKENS} max tokens per step")
    engine = make_engine(kind="vllm", model="embedded", seed=SEED)
    engine.generate(bench_prompts(2), GenParams(max_tokens=4))  # warm-up
    with tempfile.TemporaryDirectory(prefix="cai-bench-resume-") as tmp:
        work = Path(tmp)
        write_prompts(work)
        if "overhead" in parts or "resume" in parts:
            result["overhead"] = {**overhead(engine, work), "load_avg": round(load_average(), 2)}
            report_overhead(result["overhead"])
        if "resume" in parts:
            result["resume"] = {**resume_finished(work), "load_avg": round(load_average(), 2)}
            print(f"resume of a finished run: {result['resume']['resume_s']} s (python imports alone "
                  f"{result['resume']['python_imports_s']} s), no engine", flush=True)
        if "openai" in parts:
            load = load_average()
            result["openai_vs_offline"] = {**openai_vs_offline(engine, work), "load_avg_before": round(load, 2),
                                           "load_avg_after": round(load_average(), 2)}
            o = result["openai_vs_offline"]
            print(f"openai {[r['tok_per_s'] for r in o['openai']]} vs offline {[r['tok_per_s'] for r in o['offline']]}"
                  f" tok/s: ratio of the best runs {o['throughput_ratio']}", flush=True)
    engine.close()
    print(f"saved {save('resume', result)}")


def report_overhead(o: dict) -> None:
    print(f"overhead: sharded {o['sharded_s']} s vs in-memory {o['in_memory_s']} s (best: {o['wall_overhead']:+.1%}); "
          f"store time {o['store_s']} s = at most {o['store_share']:.2%} of the run", flush=True)


if __name__ == "__main__":
    main()
