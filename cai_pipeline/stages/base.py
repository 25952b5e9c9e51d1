"""What every stage shares: its context (plain values, no globals) and its result (rows, rejects, counts)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cai_pipeline.engines.base import Completion
from cai_pipeline.rng import derive_seed, rng_for


@dataclass
class StageContext:
    seed: int
    shard: int
    cfg: Any  # RunConfig: stages read their own section
    constitution: Any = None  # Constitution, where the stage needs one
    templates: Any = None  # TemplateSet

    def call_seed(self, stage: str, *keys: object) -> int:
        """Seed for one engine call: keyed by stage, shard and step, so re-running a shard repeats it."""
        return derive_seed(self.seed, stage, self.shard, *keys)

    def rng(self, *keys: object):
        """Row-level randomness keyed by ids (prompt_id, sample_idx, round), independent of shards."""
        return rng_for(self.seed, *keys)


@dataclass
class StageResult:
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # anything worth counting besides rows and rejects


def make_reject(stage: str, key: str, reason: str, detail: str, row: dict) -> dict:
    return {"stage": stage, "key": key, "reason": reason, "detail": detail,
            "row": json.dumps(row, ensure_ascii=False, default=str)}


def error_reason(comp: Completion) -> str:
    """Engines write errors as 'reason: detail'; the reason is what the manifest counts."""
    return (comp.error or "engine_error").split(":", 1)[0].strip() or "engine_error"
