"""Executors schedule shards; they never compute one themselves (that is `pipeline.run_shard`).

An executor has `run(stage, shards, assets, store, on_done, on_rows)`, calling `on_done(shard, stats)` as
each shard lands (the driver keeps the manifest and the progress), plus `engines` (engines for run-scope
stages on the driver), `release()`, `close()` and `engine_stats()`.

- local.py: the shards one after another in this process, on one engine at a time;
- ray.py: on a pool of engine actors through Ray Data (executor.kind=ray), each actor running
  ray_worker.ShardWorker.
"""

from __future__ import annotations


def make_executor(cfg, engine=None):
    if cfg.executor.kind == "ray":
        from cai_pipeline.executors.ray import RayExecutor

        return RayExecutor(cfg, given=engine)
    from cai_pipeline.executors.local import LocalExecutor

    return LocalExecutor(cfg, given=engine)
