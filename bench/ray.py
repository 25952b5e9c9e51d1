"""Scale-out on one machine: what the Ray executor costs next to the local one, and what limits it on a cluster.

1. The same sample → revise → judge work (hh-rlhf prompts, n=2, one revision round, the embedded model) through
   `cai run` three ways, each in a fresh process, alternating, best of REPS kept per side:
   (a) local executor, and Ray with 1 actor × 2 CPUs: throughput ratio (goal ≥ 0.90) and start-up seconds;
   (b) Ray with 2 actors × 1 CPU against (a).
   Per stage the child records its wall time and the shards' own compute seconds (from their stats): wall −
   compute is what starting the engine (locally) or Ray and the actor pool (Ray) cost that stage.
2. The driver's cost per shard, for the GPU plan: Ray Data's round trip for a shard that does nothing (one
   actor, one shard in flight, as the executor runs), plus the driver's own work when a shard lands (the
   manifest totals, written atomically). N GPU actors keep one driver busy when N × that cost reaches the time
   one actor takes for a shard.

Run it on a quiet machine (other load changes every number here; the load average is recorded):

    .venv/bin/python bench/ray.py             # results in bench/results/ray.json
    .venv/bin/python bench/ray.py --quick     # 16 prompts, 48 tokens (bench/results/ray-quick.json)
    .venv/bin/python bench/ray.py --mid       # 8 prompts, 32 tokens (bench/results/ray-mid.json)
    .venv/bin/python bench/ray.py --sides ray_1x2_per_stage   # only these sides besides local and ray_1x2
    .venv/bin/python bench/ray.py --smoke     # 4 prompts and tiny outputs: only checks that it runs
    .venv/bin/python bench/ray.py --threads   # what a 2-CPU actor sees (cores, threads, OpenMP), matmuls timed
    .venv/bin/python bench/ray.py --teams     # matmuls on a second thread after the main thread ran them

Sides: local; ray_1x2 (1 actor × 2 CPUs, one pool per run); ray_1x2_per_stage (the same with a pool and a model
load per stage, as before pool reuse); ray_2x1 (2 actors × 1 CPU). Each run records its model loads (the
manifest's engine_stats) and the load average when it ended.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where this very file would shadow `import ray`.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_prompts, load_average, machine, run_child, save  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FULL = {"prompts": 32, "shard_size": 8, "max_tokens": 64, "reps": 2, "noop_shards": 200}
QUICK = {"prompts": 16, "shard_size": 8, "max_tokens": 48, "reps": 2, "noop_shards": 100}
MID = {"prompts": 8, "shard_size": 4, "max_tokens": 32, "reps": 2, "noop_shards": 50}
SMOKE = {"prompts": 4, "shard_size": 2, "max_tokens": 8, "reps": 1, "noop_shards": 10}
STAGES = ("sample", "revise", "judge")
RAY_1X2 = ["executor.kind=ray", "executor.actors=1", "executor.cpus_per_actor=2"]
# ray_1x2_per_stage: as before pool reuse (a pool, and a model load per actor, for every stage): the child
# turns the grouping off (PER_STAGE below), everything else is the ray_1x2 run.
SIDES = {"local": ["executor.kind=local"], "ray_1x2": RAY_1X2, "ray_1x2_per_stage": [*RAY_1X2, "PER_STAGE"],
         "ray_2x1": ["executor.kind=ray", "executor.actors=2", "executor.cpus_per_actor=1"]}


def overrides(out: Path, prompts: Path, size: dict, engine: str) -> list[str]:
    return [f"out_dir={out}", f"prompts.path={prompts}", f"shard_size={size['shard_size']}", "sample.n=2",
            f"sample.max_tokens={size['max_tokens']}", f"revise.max_tokens={size['max_tokens']}", "revise.rounds=1",
            "revise.few_shot=0", "judge.principles=1", f"engine.kind={engine}", "stages=[sample,revise,pairs,judge]"]


# -- child: one side of the comparison -------------------------------------------------------------------------


def side(args: list[str]) -> dict:
    """`cai run` with per-stage wall clocks; prints the stage figures as JSON."""
    import cai_pipeline.executors.ray as ray_executor
    import cai_pipeline.pipeline as pipeline
    from cai_pipeline.cli import main

    if "PER_STAGE" in args:
        args = [a for a in args if a != "PER_STAGE"]
        ray_executor.stage_group = lambda first, planned, cfg: [first]
    walls, real = {}, pipeline.run_sharded

    def timed(stage, *a, **k):
        start = time.perf_counter()
        try:
            return real(stage, *a, **k)
        finally:
            walls[stage.name] = time.perf_counter() - start

    pipeline.run_sharded = timed
    start = time.perf_counter()
    if main(["run", str(REPO / "configs" / "demo.yaml"), *args]) != 0:
        raise SystemExit("the run failed")
    total = time.perf_counter() - start
    out = Path(next(a for a in args if a.startswith("out_dir=")).split("=", 1)[1])
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["stages"]
    figures = {name: {"wall_s": round(walls[name], 2), "compute_s": stages[name]["seconds"],
                      "output_tokens": stages[name]["output_tokens"], "rows": stages[name]["out"]} for name in STAGES}
    tokens = sum(f["output_tokens"] for f in figures.values())
    wall = sum(f["wall_s"] for f in figures.values())
    loads = sum(e.get("loads", 0) for e in manifest.get("engine_stats", {}).values())
    return {"stages": figures, "total_s": round(total, 2), "stages_wall_s": round(wall, 2), "output_tokens": tokens,
            "tok_per_s": round(tokens / wall, 1), "model_loads": loads, "load_average": round(load_average(), 2)}


def steady_rate(run: dict, actors: int) -> float:
    """Output tokens of the generating stages over the time their actors spent computing shards (start-up left
    out): the engine's own rate where it runs, inside an actor or not."""
    gen = [run["stages"][s] for s in ("sample", "revise")]
    return round(sum(f["output_tokens"] for f in gen) / sum(f["compute_s"] / actors for f in gen), 1)


def startup(stage: dict, actors: int = 1) -> float:
    """A stage's wall time not spent computing shards (with N actors computing at once, compute / N)."""
    return round(max(0.0, stage["wall_s"] - stage["compute_s"] / actors), 2)


def driver_cost(noop_shards: int) -> dict:
    """Seconds per shard the driver spends: Ray Data's round trip for a no-op shard, and on_done's work."""
    import ray
    import ray.data

    from cai_pipeline.executors.ray import data_context, quiet_ray
    from cai_pipeline.pipeline import StageTotals
    from cai_pipeline.store import RunStore

    quiet_ray()
    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=128 * 1024**2)
    try:
        with data_context(enable_progress_bars=False, max_errored_blocks=-1):
            ds = ray.data.from_items([{"shard": i} for i in range(noop_shards)], override_num_blocks=noop_shards)
            ds = ds.map_batches(NoOp, batch_size=1, num_cpus=1,
                                compute=ray.data.ActorPoolStrategy(size=1, max_tasks_in_flight_per_actor=1))
        rows, start, first = 0, time.perf_counter(), None
        for _ in ds.iter_rows():
            rows, first = rows + 1, first or time.perf_counter()
        per_shard = (time.perf_counter() - first) / max(1, rows - 1)  # after the pool is up
    finally:
        ray.shutdown()
    with tempfile.TemporaryDirectory() as tmp:
        store, manifest = RunStore(tmp), _realistic_manifest()
        totals = StageTotals([], noop_shards)
        start = time.perf_counter()
        for _ in range(noop_shards):
            totals.add({"in": 64, "out": 128, "seconds": 60.0, "output_tokens": 30000, "rejected": {"too_long": 1}})
            manifest["stages"]["revise"] = totals.as_dict()
            store.write_manifest(manifest)
        on_done = (time.perf_counter() - start) / noop_shards
    return {"ray_round_trip_s": round(per_shard, 4), "on_done_s": round(on_done, 4),
            "per_shard_s": round(per_shard + on_done, 4), "noop_shards": noop_shards}


def thread_view() -> dict:
    """What a process sees that decides its CPU speed: cores it may run on, torch's threads, the OpenMP and
    vLLM variables."""
    import torch

    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "VLLM_CPU_OMP_THREADS_BIND", "OMP_PROC_BIND")
    return {"affinity": sorted(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "nice": os.nice(0),
            **{k: os.environ.get(k) for k in keys}}


def matmul_seconds(steps: int = 500) -> float:
    """The model's shapes without the model: a decode-sized bf16 matmul (64 rows × 576 → 1536), `steps` times."""
    import torch

    a, w = torch.randn(64, 576, dtype=torch.bfloat16), torch.randn(576, 1536, dtype=torch.bfloat16)
    for _ in range(50):
        a @ w
    start = time.perf_counter()
    for _ in range(steps):
        a @ w
    return time.perf_counter() - start


def actor_threads(reps: int = 2, system: dict | None = None) -> dict:
    """One actor × 2 CPUs as the executor builds it (ShardWorker's use_threads), against this process on
    torch's defaults: what each sees, and the same matmuls timed in each, alternating. `system`: the Ray
    instance's _system_config (default: the executor's own, executors/ray.py LOCAL_SYSTEM_CONFIG)."""
    import ray

    from cai_pipeline.executors.ray import LOCAL_SYSTEM_CONFIG, quiet_ray

    quiet_ray()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2,
             _system_config=LOCAL_SYSTEM_CONFIG if system is None else system)
    try:
        @ray.remote(num_cpus=2)
        class Probe:
            def __init__(self, niceness):
                from cai_pipeline.executors.ray_worker import restore_priority, use_threads

                if niceness is not None:
                    restore_priority(niceness)
                use_threads(2)

            def view(self):
                return thread_view()

            def time(self):
                return matmul_seconds()

        actor = Probe.remote(None if system == {} else os.getpriority(os.PRIO_PROCESS, 0))
        seen = {"actor": ray.get(actor.view.remote()), "local": thread_view()}
        times = {"local": [], "actor": []}
        for _ in range(reps):
            times["local"].append(round(matmul_seconds(), 3))
            times["actor"].append(round(ray.get(actor.time.remote()), 3))
    finally:
        ray.shutdown()
    ratio = min(times["local"]) / min(times["actor"])
    return {"seen": seen, "seconds": times, "actor_vs_local_speed": round(ratio, 3),
            "load_average": round(load_average(), 2)}


def two_threads(first: str, reps: int = 3) -> dict:
    """The cause of one 2-CPU actor's 0.66, without Ray or a model: the same matmuls on a second thread, after
    (`first="main"`) or without (`first="none"`) the main thread running them first, as Ray Data builds the
    actor's class on the main thread and calls it on a thread of its own. Each child process is fresh."""
    from concurrent.futures import ThreadPoolExecutor

    main_s = [matmul_seconds(2000) for _ in range(reps)] if first == "main" else []
    with ThreadPoolExecutor(max_workers=1) as pool:
        other_s = [pool.submit(matmul_seconds, 2000).result() for _ in range(reps)]
    return {"main_thread_s": round(min(main_s), 3) if main_s else None, "second_thread_s": round(min(other_s), 3)}


def thread_teams() -> dict:
    after, alone = run_child([__file__, "--two-threads", "main"]), run_child([__file__, "--two-threads", "none"])
    return {"main_thread_then_second_thread": after, "second_thread_only": alone,
            "second_thread_speed_vs_main": round(after["main_thread_s"] / after["second_thread_s"], 3),
            "second_thread_alone_vs_main": round(after["main_thread_s"] / alone["second_thread_s"], 3),
            "load_average": round(load_average(), 2)}


class NoOp:
    def __call__(self, batch):
        return {"shard": batch["shard"], "stats": ["{}"]}


def _realistic_manifest() -> dict:
    from cai_pipeline.config import load_config

    cfg = load_config(REPO / "configs" / "demo.yaml", ["out_dir=/tmp/x"])
    return {"config": cfg.model_dump(), "fingerprints": {s: cfg.model_dump() for s in STAGES}, "stages": {}}


# -- parent: alternate the sides, then the driver's cost --------------------------------------------------------


def compare(size: dict, engine: str, work: Path) -> dict:
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": c}) + "\n" for c in bench_prompts(size["prompts"])))
    runs: dict[str, list] = {name: [] for name in SIDES}
    for rep in range(size["reps"]):  # alternate, so drifting load hits every side alike
        for name, extra in SIDES.items():
            args = [*overrides(work / f"{name}-{rep}", prompts, size, engine), *extra]
            runs[name].append(run_child([__file__, "--side", json.dumps(args)]))
    best = {name: max(r, key=lambda x: x["tok_per_s"]) for name, r in runs.items()}
    local, one = best["local"], best["ray_1x2"]
    actors = {name: 2 if name == "ray_2x1" else 1 for name in best}
    result = {
        "runs": runs,
        "ray_1x2_vs_local": round(one["tok_per_s"] / local["tok_per_s"], 3),
        "ray_1x2_vs_local_steady": round(steady_rate(one, 1) / steady_rate(local, 1), 3),
        # per repetition, local and Ray side by side (they ran one after the other): the spread says how noisy
        "ray_1x2_vs_local_steady_per_rep": [round(steady_rate(r, 1) / steady_rate(lo, 1), 3)
                                            for lo, r in zip(runs["local"], runs["ray_1x2"])],
        "steady_tok_per_s": {name: steady_rate(b, actors[name]) for name, b in best.items()},
        "model_loads": {name: b["model_loads"] for name, b in best.items()},
        "startup_s": {name: {s: startup(b["stages"][s], actors[name]) for s in STAGES} for name, b in best.items()},
    }
    if "ray_2x1" in best:
        result["ray_2x1_vs_1x2"] = round(best["ray_2x1"]["tok_per_s"] / one["tok_per_s"], 3)
    return result


def main() -> None:
    if "--side" in sys.argv:
        print(json.dumps(side(json.loads(sys.argv[sys.argv.index("--side") + 1]))))
        return
    if "--threads" in sys.argv:  # the executor's settings, then Ray's defaults (workers at nice +15)
        print(json.dumps({"ours": actor_threads(), "ray_defaults": actor_threads(system={})}, indent=2))
        return
    if "--two-threads" in sys.argv:
        print(json.dumps(two_threads(sys.argv[sys.argv.index("--two-threads") + 1])))
        return
    if "--teams" in sys.argv:
        teams = thread_teams()
        print(json.dumps(teams, indent=2))
        print(f"saved {save('ray-teams', {'machine': machine(), **teams})}")
        return
    if "--driver" in sys.argv:
        print(json.dumps(driver_cost(int(sys.argv[sys.argv.index("--driver") + 1]))))
        return
    smoke = "--smoke" in sys.argv
    size = SMOKE if smoke else QUICK if "--quick" in sys.argv else MID if "--mid" in sys.argv else FULL
    if "--sides" in sys.argv:  # e.g. --sides local,ray_1x2 (local and ray_1x2 are always wanted)
        wanted = {"local", "ray_1x2", *sys.argv[sys.argv.index("--sides") + 1].split(",")}
        for name in [n for n in SIDES if n not in wanted]:
            del SIDES[name]
    import importlib.util

    engine = "vllm" if importlib.util.find_spec("vllm") else "hf"
    result = {"machine": machine(), "load_average_start": round(load_average(), 2), "engine": engine, **size}
    with tempfile.TemporaryDirectory() as tmp:
        result.update(compare(size, engine, Path(tmp)))
    result["driver"] = run_child([__file__, "--driver", str(size["noop_shards"])])
    result["load_average_end"] = round(load_average(), 2)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    names = {id(SMOKE): "ray-smoke", id(QUICK): "ray-quick", id(MID): "ray-mid"}
    print(f"saved {save(names.get(id(size), 'ray'), result)}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's local workers start from this environment: let them import this checkout, as this script does.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    main()
