"""The judge stage: a shard's pairs judged on k principles each, in both orders (cai_pipeline/judging.py);
verdicts strong enough to be labels are kept, the rest go to rejects with their reasons (tie, inconsistent,
below_margin), and a pair the judge could not score goes to rejects with the engine's reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from cai_pipeline.engines.base import Failure
from cai_pipeline.judging import judge_pairs, picks_same_position
from cai_pipeline.stages.base import StageContext, StageResult, make_reject

_RECORD_KEYS = ("verdicts", "p_a", "consistent")


# ---------------------------------------------------------------------------------------------------------
# The stage: judge a shard's pairs, keep the verdicts strong enough to be labels, reject the rest with reasons


def weak_verdict(row: Mapping, min_margin: float, drop_inconsistent: bool) -> tuple[str, str] | None:
    """(reason, detail) when a verdict is too weak to be a label; None to keep it."""
    p = row["p_a"]
    if p == 0.5:
        return "tie", "p_a is exactly 0.5: the judge has no preference"
    if drop_inconsistent and not row["consistent"]:
        flipped = [v["principle_id"] for v in row["verdicts"] if picks_same_position(v["p_a_first"], v["p_a_second"])]
        return "inconsistent", f"the two orders picked the same position under {', '.join(flipped)} (p_a={p:.4f})"
    if abs(p - 0.5) < min_margin:
        return "below_margin", f"|p_a - 0.5| = {abs(p - 0.5):.4f} < judge.min_margin {min_margin}"
    return None


def label_source(verdicts: list[dict]) -> str:
    """Where a label came from: `check` when every verdict came from a principle's check, `judge` when every
    one from the LLM, `mixed` otherwise."""
    sources = {v["source"] for v in verdicts}
    return sources.pop() if len(sources) == 1 else "mixed"


def _tally(counts: Counter, row: Mapping) -> None:
    counts["scored"] += 1
    counts["consistent"] += bool(row["consistent"])
    if row["origin"] == "revision":  # a is the final revision, b the initial response
        counts["revision_pairs"] += 1
        counts["revision_preferred"] += row["p_a"] > 0.5


def run(inputs: dict[str, list[dict]], engine, ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.judge
    pairs = inputs["pairs"]
    judged = judge_pairs(engine, pairs, ctx.constitution.principles, reasoning=cfg.reasoning, seed=ctx.seed,
                         k=cfg.principles, templates=ctx.templates, reasoning_max_tokens=cfg.reasoning_max_tokens,
                         layout=cfg.layout, check_confidence=cfg.check_confidence)
    out = StageResult()
    for pair, rec in zip(pairs, judged):
        if rec["error"]:
            out.rejects.append(make_reject("judge", pair["pair_id"], Failure(rec["error"]).reason, rec["error"], pair))
            continue
        row = {**pair, "judge_principle_ids": [v["principle_id"] for v in rec["verdicts"]],
               **{k: rec[k] for k in _RECORD_KEYS}, "label_source": label_source(rec["verdicts"])}
        _tally(out.counts, row)
        if row["label_source"] != "judge":  # pairs a check decided (alone or with the LLM): counted in the manifest
            out.counts[f"label_source:{row['label_source']}"] += 1
        weak = weak_verdict(row, cfg.min_margin, cfg.drop_inconsistent)
        if weak:
            out.rejects.append(make_reject("judge", pair["pair_id"], *weak, row))
        else:
            out.rows.append(row)
    return out
