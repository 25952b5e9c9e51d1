"""What an edit of the constitution changed between two runs of the same prompts and seed (typically the second
made with `--reuse` of the first): per edited principle, the revise chains it touched with their critique and
revision before and after, the judge verdicts under it that moved, and its judge statistics and audit win
rate before and after. Pure reads of two run folders; `cai compare` prints it first."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field

from cai_pipeline.constitution import Constitution, load_constitution
from cai_pipeline.store import RunStore, read_parquet

_TEXTS = ("critique", "revision", "comparison", "weight")
_WEAK = ("tie", "inconsistent", "below_margin")  # judge rejects that hold verdicts


@dataclass
class PrincipleEffect:
    principle_id: str
    change: str  # "edited: critique, comparison", "added", "removed"
    chains: int = 0  # revise chains of the new run that drew it
    chains_changed: int = 0  # of those, the ones whose rounds differ from the old run's
    examples: list[dict] = field(default_factory=list)  # {prompt, before, after}: the round that drew it
    verdicts: int = 0  # verdicts under it on pairs both runs judged
    verdicts_moved: int = 0  # whose order-averaged probability changed
    verdicts_flipped: int = 0  # whose preferred side changed
    judge_before: dict = field(default_factory=dict)  # mean p of the revision over the initial, consistency
    judge_after: dict = field(default_factory=dict)
    audit_before: float | None = None  # its audit win rate, where the runs have an audit
    audit_after: float | None = None


def changed_principles(old: Constitution, new: Constitution) -> dict[str, str]:
    """principle id → what changed about it (only the fields the model sees, and the weight)."""
    olds, news = {p.id: p for p in old.principles}, {p.id: p for p in new.principles}
    out = {i: "removed" for i in olds if i not in news} | {i: "added" for i in news if i not in olds}
    for pid in (i for i in olds if i in news):
        fields = [f for f in _TEXTS if getattr(olds[pid], f) != getattr(news[pid], f)]
        if fields:
            out[pid] = "edited: " + ", ".join(fields)
    return out


def judged(store: RunStore) -> dict[str, dict]:
    """Every judged pair by pair_id: the kept rows and the rejects that hold verdicts."""
    rows = store.read_stage("judge")
    for i in store.shard_indices("judge"):
        path = store.layout.rejects("judge", i)
        rows += [json.loads(r["row"]) for r in (read_parquet(path) if path.exists() else []) if r["reason"] in _WEAK]
    return {r["pair_id"]: r for r in rows}


def _p(v: dict) -> float:
    return 0.5 * (v["p_a_first"] + v["p_a_second"])


def judge_stats(pairs: dict[str, dict], pid: str) -> dict:
    """Under one principle: how often the revision was preferred over the initial response, the mean p, and
    the order-consistency rate."""
    verdicts = [(r, v) for r in pairs.values() for v in r["verdicts"] if v["principle_id"] == pid]
    if not verdicts:
        return {}
    revision = [_p(v) for r, v in verdicts if r["origin"] == "revision"]
    consistent = [(v["p_a_first"] - 0.5) * (v["p_a_second"] - 0.5) >= 0 for _, v in verdicts]
    return {"verdicts": len(verdicts), "revision_preferred": _share(sum(p > 0.5 for p in revision), len(revision)),
            "mean_p_revision": round(statistics.fmean(revision), 3) if revision else None,
            "consistent": _share(sum(consistent), len(consistent))}


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 3) if total else None


def _chains(effect: PrincipleEffect, old: dict, new: dict, examples: int) -> None:
    for key, row in new.items():
        ids = [r["principle_id"] for r in row["rounds"]]
        if effect.principle_id not in ids:
            continue
        effect.chains += 1
        before = old.get(key)
        if before is None or before["rounds"] == row["rounds"]:
            continue
        effect.chains_changed += 1
        r = ids.index(effect.principle_id)
        if len(effect.examples) < examples and r < len(before["rounds"]):
            effect.examples.append({"prompt": row["prompt"][-1]["content"], "round": r,
                                    "before": before["rounds"][r], "after": row["rounds"][r]})


def _verdicts(effect: PrincipleEffect, old: dict, new: dict) -> None:
    for pair_id, row in new.items():
        other = old.get(pair_id)
        if other is None:
            continue
        a = {v["principle_id"]: v for v in other["verdicts"]}
        for v in (v for v in row["verdicts"] if v["principle_id"] == effect.principle_id):
            if effect.principle_id not in a:
                continue
            effect.verdicts += 1
            before, after = _p(a[effect.principle_id]), _p(v)
            effect.verdicts_moved += before != after
            effect.verdicts_flipped += (before - 0.5) * (after - 0.5) < 0


def edit_effects(a: RunStore, b: RunStore, *, examples: int = 2) -> list[PrincipleEffect]:
    """Per principle the edit from run A's constitution to run B's changed: its effect on B's rows. [] when the
    runs' constitutions are the same (or a run has no snapshot of its own)."""
    from cai_pipeline.audit.summary import read_summary

    if not (a.layout.constitution.exists() and b.layout.constitution.exists()):
        return []
    changes = changed_principles(load_constitution(a.layout.constitution), load_constitution(b.layout.constitution))
    if not changes:
        return []
    key = lambda r: f"{r['prompt_id']}/{r['sample_idx']}"  # noqa: E731
    chains_a = {key(r): r for r in a.read_stage("revise")}
    chains_b = {key(r): r for r in b.read_stage("revise")}
    pairs_a, pairs_b = judged(a), judged(b)
    audits = read_summary(a.layout.audit_summary), read_summary(b.layout.audit_summary)
    out = []
    for pid, change in changes.items():
        effect = PrincipleEffect(pid, change)
        _chains(effect, chains_a, chains_b, examples)
        _verdicts(effect, pairs_a, pairs_b)
        effect.judge_before, effect.judge_after = judge_stats(pairs_a, pid), judge_stats(pairs_b, pid)
        effect.audit_before, effect.audit_after = (
            (s.principles[pid].win_rate if s and pid in s.principles else None) for s in audits)
        out.append(effect)
    return out
