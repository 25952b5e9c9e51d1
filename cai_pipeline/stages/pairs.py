"""Pairs: what the judge compares. Sampled pairs (two samples of one prompt) and revision pairs (a row's
final revision vs its initial response). Identical texts are dropped with reason `identical`."""

from __future__ import annotations

import itertools
from collections import defaultdict

from cai_pipeline.reuse import ADDED, RECOMPUTED, REUSED
from cai_pipeline.rng import stable_id
from cai_pipeline.rowkeys import pair_key
from cai_pipeline.stages.base import StageContext, StageResult, make_reject


def pair_id(prompt_id: str, origin: str, a_idx: int, b_idx: int) -> str:
    """Stable: the same two responses of the same prompt get the same id in every run."""
    return stable_id(prompt_id, origin, a_idx, b_idx)


def _pair(row: dict, origin: str, a: tuple[str, int, bool], b: tuple[str, int, bool], principle_ids: list[str]) -> dict:
    """a, b: (text, sample index, truncated)."""
    return {"pair_id": pair_id(row["prompt_id"], origin, a[1], b[1]), "prompt_id": row["prompt_id"],
            "prompt": row["prompt"], "a": a[0], "b": b[0], "origin": origin, "a_idx": a[1], "b_idx": b[1],
            "a_truncated": a[2], "b_truncated": b[2], "revision_principle_ids": principle_ids}


def _side(sample: dict) -> tuple[str, int, bool]:
    return sample["response"], sample["sample_idx"], sample["finish_reason"] == "length"


def sampled_pairs(samples: list[dict], ctx: StageContext) -> list[dict]:
    """All pairs of a prompt's samples for n ≤ 4; otherwise `max_sampled_per_prompt` (default n) drawn at random."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_prompt[s["prompt_id"]].append(s)
    out = []
    for pid, group in by_prompt.items():
        group.sort(key=lambda s: s["sample_idx"])
        combos = list(itertools.combinations(group, 2))
        limit = ctx.cfg.pairs.max_sampled_per_prompt or (len(combos) if len(group) <= 4 else len(group))
        if len(combos) > limit:
            combos = sorted(ctx.rng("pairs", pid).sample(combos, limit), key=lambda c: (c[0]["sample_idx"], c[1]["sample_idx"]))
        out += [_pair(x, "sampled", _side(x), _side(y), []) for x, y in combos]
    return out


def revision_pairs(revised: list[dict]) -> list[dict]:
    return [_pair(r, "revision", (r["final"], r["sample_idx"], r["final_truncated"]),
                  (r["initial"], r["sample_idx"], r["initial_truncated"]),
                  [x["principle_id"] for x in r["rounds"] if x["kept_previous"] is None])
            for r in revised]


def select_inputs(cfg, inputs: tuple[str, ...]) -> tuple[str, ...]:
    """Revise shards are read only where revision pairs are wanted and the run revises."""
    return inputs if cfg.pairs.revision and "revise" in cfg.stages else ("sample",)


def run(inputs: dict[str, list[dict]], engine, ctx: StageContext) -> StageResult:
    candidates = sampled_pairs(inputs["sample"], ctx) if ctx.cfg.pairs.sampled else []
    if "revise" in inputs:
        candidates += revision_pairs(inputs["revise"])
    out = StageResult()
    for pair in candidates:
        if pair["a"].strip() == pair["b"].strip():
            out.rejects.append(make_reject("pairs", pair["pair_id"], "identical",
                                           f"{pair['origin']} pair: both responses are the same text", pair))
        else:
            out.rows.append(pair)
    out.counts.update(pair["origin"] for pair in out.rows)
    # Pairs cost no model call: they are always made again from their members. The keys say which are new.
    out.keys = {"rows": {pair["pair_id"]: pair_key(pair) for pair in out.rows}}
    if ctx.reuse:
        old = ctx.reuse.stage("pairs")
        for pid, key in out.keys["rows"].items():
            entry = old.get(pid)
            out.counts[ADDED if entry is None else REUSED if entry["key"] == key else RECOMPUTED] += 1
    return out
