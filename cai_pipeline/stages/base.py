"""What every stage shares: its context (plain values, no globals) and its result (rows, rejects, counts).

A shard-scope stage is `run(inputs, engine, ctx: StageContext) -> StageResult` over one shard's rows; a
run-scope stage is `run(ctx: RunContext) -> dict` (its summary) over the whole run folder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cai_pipeline.engines.base import Completion, Failure
from cai_pipeline.records import make_reject
from cai_pipeline.rng import derive_seed, rng_for

__all__ = ["RunContext", "StageContext", "StageResult", "error_reason", "make_reject"]


@dataclass
class StageContext:
    seed: int
    shard: int
    cfg: Any  # RunConfig: stages read their own section
    constitution: Any = None  # Constitution, where the stage needs one
    templates: Any = None  # TemplateSet
    progress: Any = None  # optional callable(rows): rows of this shard finished so far, for progress lines

    def call_seed(self, stage: str, *keys: object) -> int:
        """Seed for one engine call: keyed by stage, shard and step, so re-running a shard repeats it."""
        return derive_seed(self.seed, stage, self.shard, *keys)

    def rng(self, *keys: object):
        """Row-level randomness keyed by ids (prompt_id, sample_idx, round), independent of shards."""
        return rng_for(self.seed, *keys)


@dataclass
class RunContext:
    """What a run-scope stage sees: the config, the run folder, what the run loaded, the manifest so far (read
    only: the executor records the stage's summary), and `engines.get(role)` for stages that need a model."""

    cfg: Any  # RunConfig
    store: Any  # RunStore
    assets: Any  # Assets
    manifest: dict
    engines: Any = None
    redo: bool = False  # asked to run again from scratch (`cai train --restart`): no skip, no resume
    fingerprint: dict | None = None  # what pipeline.run_whole records for this run: a stage may keep it too


@dataclass
class StageResult:
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # anything worth counting besides rows and rejects


def error_reason(comp: Completion) -> str:
    """The countable reason of a failed completion (engines write errors as Failure texts)."""
    return Failure(comp.error or "engine_error").reason
