"""The judge stage: a shard's pairs judged on k principles each, in both orders (cai_pipeline/judging.py);
verdicts strong enough to be labels are kept, the rest go to rejects with their reasons (tie, inconsistent,
below_margin), and a pair the judge could not score goes to rejects with the engine's reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from cai_pipeline.engines.base import Failure
from cai_pipeline.judging import VerdictReuse, canonical, judge_pairs, picks_same_position
from cai_pipeline.reuse import ADDED, RECOMPUTED, REUSED
from cai_pipeline.rowkeys import judge_salt
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


def known_verdicts(old: dict) -> dict[str, dict]:
    """The old run's verdicts by key, turned to their pair's canonical orientation (judging.canonical)."""
    known = {}
    for entry in old.values():
        row = entry["rows"][0]
        swapped = canonical(row["a"], row["b"])[2]
        for verdict in row["verdicts"]:
            key = entry["key"].get(verdict["principle_id"])
            if key and not swapped:
                known[key] = verdict
            elif key:  # stored as seen from a: undo judging.swap
                known[key] = {"p_a_first": 1.0 - verdict["p_a_second"], "p_a_second": 1.0 - verdict["p_a_first"],
                              "reasoning_first": verdict["reasoning_second"],
                              "reasoning_second": verdict["reasoning_first"]}
    return known


def _same_verdicts(old: dict | None, pair: Mapping, keys: dict) -> dict | None:
    """The old record of this pair when it holds exactly these verdicts of the same two texts in the same order:
    its numbers are taken as they are, so a wholly reused row is byte-identical to the old one."""
    if old is None or old["key"] != keys:
        return None
    row = old["rows"][0]
    same = all(row[k] == pair[k] for k in ("a", "b", "prompt"))
    return {"judge_principle_ids": row["judge_principle_ids"], **{k: row[k] for k in _RECORD_KEYS},
            "label_source": row.get("label_source", "judge")} if same else None


def run(inputs: dict[str, list[dict]], engine, ctx: StageContext) -> StageResult:
    cfg = ctx.cfg.judge
    pairs = inputs["pairs"]
    old = ctx.reuse.stage("judge") if ctx.reuse else {}
    reuse = VerdictReuse(judge_salt(ctx.cfg), known_verdicts(old))
    judged = judge_pairs(engine, pairs, ctx.constitution.principles, reasoning=cfg.reasoning, seed=ctx.seed,
                         k=cfg.principles, templates=ctx.templates, reasoning_max_tokens=cfg.reasoning_max_tokens,
                         layout=cfg.layout, reuse=reuse, check_confidence=cfg.check_confidence)
    out = StageResult(keys={"rows": {}})
    for pair, rec, keys in zip(pairs, judged, reuse.keys, strict=True):
        if rec["error"]:
            out.rejects.append(make_reject("judge", pair["pair_id"], Failure(rec["error"]).reason, rec["error"], pair))
            continue
        out.keys["rows"][pair["pair_id"]] = keys
        taken = _same_verdicts(old.get(pair["pair_id"]), pair, keys)
        row = {**pair, **(taken or {"judge_principle_ids": [v["principle_id"] for v in rec["verdicts"]],
                                    **{k: rec[k] for k in _RECORD_KEYS}, "label_source": label_source(rec["verdicts"])})}
        if ctx.reuse:
            out.counts[REUSED if taken else RECOMPUTED if pair["pair_id"] in old else ADDED] += 1
        _tally(out.counts, row)
        if row["label_source"] != "judge":  # pairs a check decided (alone or with the LLM): counted in the manifest
            out.counts[f"label_source:{row['label_source']}"] += 1
        weak = weak_verdict(row, cfg.min_margin, cfg.drop_inconsistent)
        if weak:
            out.rejects.append(make_reject("judge", pair["pair_id"], *weak, row))
        else:
            out.rows.append(row)
    if ctx.reuse:
        out.counts.update({"reuse:verdicts_reused": reuse.reused, "reuse:verdicts_computed": reuse.computed})
    return out
