"""Executors schedule shards; they never compute one themselves (that is `pipeline.run_shard`).

An executor has `run(stage, shards, assets, store, on_done, on_rows)`, calling `on_done(shard, stats)` as
each shard lands (the driver keeps the manifest and the progress), plus `engines` (engines for run-scope
stages on the driver), `release()`, `close()` and `engine_stats()`.
"""

from __future__ import annotations


def make_executor(cfg, engine=None):
    from cai_pipeline.executors.local import LocalExecutor

    return LocalExecutor(cfg, given=engine)
