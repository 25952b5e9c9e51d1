"""Executors schedule shards; they never compute one themselves (that is `base.run_shard`).

    base.py        the Executor interface and run_shard, the one place a shard is computed
    local.py       the shards one after another in this process, on one engine at a time
    ray.py         on a pool of engine actors through Ray Data (executor.kind=ray), each actor running
    ray_worker.py  ShardWorker: one engine, the run's assets, run_shard for each shard it is handed

Both call `on_done(shard, stats)` as each shard lands: the driver (pipeline.py) keeps the manifest and the
progress lines.
"""

from __future__ import annotations

from cai_pipeline.executors.base import Executor


def make_executor(cfg, shared_engine=None, stages: list[str] | None = None) -> Executor:
    """The executor the config asks for. shared_engine: a ready engine that serves every model role (tests
    share one per session); local only, and it is not closed here. stages: the stages this run will run
    (default cfg.stages): Ray takes a shard through consecutive stages of one model in one actor pool."""
    if cfg.executor.kind == "ray":
        from cai_pipeline.executors.ray import RayExecutor

        return RayExecutor(cfg, shared_engine=shared_engine, stages=stages)
    from cai_pipeline.executors.local import LocalExecutor

    return LocalExecutor(cfg, shared_engine=shared_engine)
