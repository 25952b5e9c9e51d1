"""What every executor shares: the one place a shard is computed (`run_shard`), and the interface executors
offer the driver (`Executor`). datatrove's `PipelineExecutor._run_for_rank` is the model: skip if done → read
inputs → run → write atomically → return stats. No progress bar and no manifest here: the driver keeps those,
so the local loop and a Ray actor call the very same function."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from cai_pipeline.assets import Assets
from cai_pipeline.errors import UserError
from cai_pipeline.stages.base import Stage, StageContext, StageResult
from cai_pipeline.store import RunStore

OnDone = Callable[[int, dict], None]  # (shard, its stats), as each shard lands
OnRows = Callable[[int, int], None]  # (shard, rows finished since the last call), for progress lines


class Executor(Protocol):
    """Schedules the shards of sharded stages; never computes one itself (that is `run_shard`)."""

    engines: object  # executors/local.Engines: engines for run-scope stages, on the driver

    def run(self, stage: Stage, shards: list[int], assets: Assets, store: RunStore, *, on_done: OnDone,
            on_rows: OnRows) -> None:
        """Compute every shard in `shards` (written into the run folder), calling on_done as each lands."""

    def release(self) -> None:
        """Give back the memory engines hold (before training)."""

    def close(self) -> None:
        """Release everything; the executor is not used again."""

    def engine_stats(self) -> dict:
        """Per model role: retries and errors by reason, for the manifest."""


def read_inputs(stage: Stage, store: RunStore, shard: int, assets: Assets) -> dict[str, list[dict]]:
    out = {}
    for name in stage.inputs_for(assets.cfg):
        if name == "prompts":
            out[name] = assets.prompt_shard(shard)
        elif not store.has_shard(name, shard):
            raise UserError(f"stage input {store.layout.shard(name, shard)} is missing; "
                            f"run --stages {name} first (or the whole pipeline)")
        else:
            out[name] = store.read_shard(name, shard)
    return out


class CountingEngine:
    """The engine a stage sees inside run_shard: the same engine, counting what the stage asked of it — requests
    (one conversation each: a `generate` batch of 8 is 8, a chain step is 1, a judge conversation scored is 1)
    and generated sequences — so `cai plan`'s numbers can be checked against the run's. Everything else is the
    engine's own (`hasattr(engine, "agenerate")` included)."""

    def __init__(self, engine):
        self._engine, self.requests, self.sequences = engine, 0, 0

    def __getattr__(self, name: str):
        if name == "agenerate":
            inner = self._engine.agenerate  # AttributeError where the engine has none, as without the wrapper

            async def agenerate(conv, params):
                self.requests, self.sequences = self.requests + 1, self.sequences + params.n
                return await inner(conv, params)

            return agenerate
        return getattr(self._engine, name)

    def generate(self, convs, params, **kwargs):  # kwargs: `seeds` where the engine seeds each row
        self.requests, self.sequences = self.requests + len(convs), self.sequences + params.n * len(convs)
        return self._engine.generate(convs, params, **kwargs)

    def choice_logprobs(self, convs, choices):
        self.requests += len(convs)
        return self._engine.choice_logprobs(convs, choices)


def shard_stats(result: StageResult, n_in: int, seconds: float, tokens: int, engine=None) -> dict:
    return {"in": n_in, "out": len(result.rows), "rejected": dict(Counter(r["reason"] for r in result.rejects)),
            "counts": dict(result.counts), "seconds": round(seconds, 3), "output_tokens": tokens,
            "requests": engine.requests if engine else 0, "sequences": engine.sequences if engine else 0}


def run_shard(stage: Stage, store: RunStore, shard: int, assets: Assets, engine, on_rows=None) -> dict | None:
    """**Contract.** Compute shard `shard` of `stage` into the run folder and return its stats; None when the
    shard was already done. `engine` serves the stage's model role (None for a stage without one);
    `on_rows(n)` hears of rows as they finish, where the stage reports them."""
    if store.has_shard(stage.name, shard):
        return None
    data = read_inputs(stage, store, shard, assets)
    ctx = StageContext(seed=assets.cfg.seed, shard=shard, cfg=assets.cfg, constitution=assets.constitution,
                       templates=assets.templates, progress=on_rows, reuse=assets.reuse)
    tokens_before = engine.stats.output_tokens if engine else 0
    counted = CountingEngine(engine) if engine else None
    start = time.perf_counter()
    result = stage.run(data, counted, ctx)
    seconds = time.perf_counter() - start
    tokens = (engine.stats.output_tokens - tokens_before) if engine else 0
    stats = shard_stats(result, len(data[stage.inputs_for(assets.cfg)[0]]), seconds, tokens, counted)
    return store.write_shard(stage.name, shard, result.rows, stage.record, result.rejects, stats, result.keys)
