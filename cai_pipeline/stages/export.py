"""Export: the run's shards become datasets — SFT (prompt + final revision) and preferences (TRL's
conversational prompt/chosen/rejected) — split train/test by prompt_id, with a dataset card.

Export is a pure function of the finished shards: it reads each stage once, rewrites datasets/ atomically,
and is skipped when the shards and its settings are what they were when it last ran.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter

from cai_pipeline.records import PreferenceRecord, SFTRecord, make_reject
from cai_pipeline.rng import derive_seed
from cai_pipeline.stages.base import RunContext
from cai_pipeline.store import RunLayout, atomic_write_text, file_digest, write_parquet

INPUTS = ("sample", "revise", "pairs", "judge")


def held_out_prompts(prompt_ids: set[str], fraction: float) -> set[str]:
    """The prompts of the test split: the `fraction` of prompts whose hashed ids come first (at least one
    where there are two or more prompts and fraction > 0). Every row of a prompt lands in the same split."""
    if fraction <= 0 or len(prompt_ids) < 2:
        return set()
    ranked = sorted(prompt_ids, key=lambda pid: derive_seed(0, "split", pid))
    return set(ranked[: max(1, round(fraction * len(ranked)))])


def sft_rows(revised: list[dict]) -> list[dict]:
    return [{"prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"],
             "messages": [*r["prompt"], {"role": "assistant", "content": r["final"]}],
             "principle_ids": [x["principle_id"] for x in r["rounds"]], "truncated": r["final_truncated"]}
            for r in revised]


def preference_row(pair: dict) -> dict:
    """A judged pair (has p_a) is oriented by the verdict; an unjudged revision pair takes the revision."""
    p_a = pair.get("p_a")
    a_wins = p_a is None or p_a > 0.5
    chosen, rejected = ("a", "b") if a_wins else ("b", "a")
    return {"pair_id": pair["pair_id"], "prompt_id": pair["prompt_id"], "prompt": pair["prompt"],
            "chosen": [{"role": "assistant", "content": pair[chosen]}],
            "rejected": [{"role": "assistant", "content": pair[rejected]}],
            "p_chosen": None if p_a is None else (p_a if a_wins else 1.0 - p_a),
            "revision_principle_ids": list(pair["revision_principle_ids"]),
            "judge_principle_ids": list(pair.get("judge_principle_ids") or []), "origin": pair["origin"],
            "label_source": pair.get("label_source"), "chosen_truncated": pair[f"{chosen}_truncated"], "rejected_truncated": pair[f"{rejected}_truncated"]}


def check_conversation(messages: list[dict], last: str) -> None:
    """What every dataset row must be, asserted before it is written: roles from the three, an optional system
    turn first, then user and assistant alternating from the user, ending with `last`. The prompt loader
    refuses anything else, so a failure here is a bug, not a user's mistake."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[:1] == ["system"] else roles
    expected = [("user", "assistant")[i % 2] for i in range(len(body))]
    if not body or body != expected or body[-1] != last:
        raise AssertionError(f"export: a row with roles {roles} is not a well-formed conversation ending with {last}")


def check_row(row: dict) -> None:
    if "messages" in row:
        check_conversation(row["messages"], "assistant")
    else:
        check_conversation(row["prompt"], "user")
        for side in ("chosen", "rejected"):
            check_conversation(row["prompt"] + row[side], "assistant")


def drop_truncated(rows: list[dict], dataset: str, rejects: list[dict]) -> list[dict]:
    """Rows whose response (either side of a pair) is unfinished go to rejects with reason `truncated`."""
    kept = []
    for row in rows:
        cut = [side for side in ("", "chosen_", "rejected_") if row.get(f"{side}truncated")]
        if not cut:
            kept.append(row)
            continue
        key = row.get("pair_id") or f"{row['prompt_id']}/{row['sample_idx']}"
        which = ", ".join(c.rstrip("_") or "the response" for c in cut)
        rejects.append(make_reject("export", key, "truncated", f"{dataset}: {which} hit max_tokens", row))
    return kept


def preference_rows(judged: list[dict], pairs: list[dict], counts: Counter) -> tuple[list[dict], str]:
    """Judged pairs where the judge ran; otherwise revision pairs, unlabelled (sampled pairs need a judge)."""
    if judged:
        return [preference_row(p) for p in judged], "judge"
    unlabelled = [p for p in pairs if p["origin"] == "sampled"]
    counts["sampled_pairs_without_judge"] = len(unlabelled)
    return [preference_row(p) for p in pairs if p["origin"] == "revision"], "pairs"


def write_splits(layout: RunLayout, name: str, rows: list[dict], model, held_out: set[str]) -> dict[str, int]:
    splits = {"train": [], "test": []}
    for row in rows:
        check_row(row)
        splits["test" if row["prompt_id"] in held_out else "train"].append(row)
    for split, part in splits.items():
        write_parquet(layout.split_file(name, split), part, model)
    return {split: len(part) for split, part in splits.items()}


def truncation_stats(sft: list[dict], prefs: list[dict]) -> dict:
    """How many responses were cut off by max_tokens, before any are dropped (the card shows the rates)."""
    def rate(hits: int, total: int) -> float | None:
        return round(hits / total, 3) if total else None

    sft_cut = sum(r["truncated"] for r in sft)
    chosen = sum(r["chosen_truncated"] for r in prefs)
    rejected = sum(r["rejected_truncated"] for r in prefs)
    return {"sft_truncated": sft_cut, "sft_truncated_rate": rate(sft_cut, len(sft)),
            "chosen_truncated": chosen, "chosen_truncated_rate": rate(chosen, len(prefs)),
            "rejected_truncated": rejected, "rejected_truncated_rate": rate(rejected, len(prefs))}


def identity(ctx: RunContext) -> dict:
    """What export reads: each input stage's fingerprint and the content of its finished shards (the sha256 of
    each data part, recorded when it was written), so a shard redone with other content makes export run again."""
    store = ctx.store
    out = {}
    for name in INPUTS:
        indices = store.shard_indices(name)
        if not indices:
            continue
        h = hashlib.sha256()
        for i in indices:
            recorded = ((store.read_stats(name, i).get("files") or {}).get("data") or {}).get("sha256")
            h.update(f"{i} {recorded or file_digest(store.layout.shard(name, i))['sha256']}\n".encode())
        out[name] = {"fingerprint": ctx.manifest.get("fingerprints", {}).get(name), "shards": len(indices),
                     "sha256": h.hexdigest()}
    return out


def outputs(ctx: RunContext) -> list:
    layout = ctx.store.layout
    return [layout.card, *(layout.split_file(name, split) for name in ("sft", "preferences")
                           for split in ("train", "test"))]


def run(ctx: RunContext) -> dict:
    from cai_pipeline.card import dataset_card, judge_section, length_stats

    cfg, store, layout = ctx.cfg, ctx.store, ctx.store.layout
    counts: Counter = Counter()
    judged = store.read_stage("judge")
    pairs = [] if judged else store.read_stage("pairs")
    sft = sft_rows(store.read_stage("revise"))
    prefs, source = preference_rows(judged, pairs, counts)
    truncation = truncation_stats(sft, prefs)
    rejects: list[dict] = []
    if cfg.export.drop_truncated:
        sft, prefs = drop_truncated(sft, "sft", rejects), drop_truncated(prefs, "preferences", rejects)
    store.write_rejects("export", 0, rejects)
    # One split for both datasets, so a prompt held out of SFT is held out of preference training too.
    held_out = held_out_prompts({r["prompt_id"] for r in sft + prefs}, cfg.export.test_fraction)
    summary = {
        "sft": write_splits(layout, "sft", sft, SFTRecord, held_out),
        "preferences": write_splits(layout, "preferences", prefs, PreferenceRecord, held_out),
        "preferences_from": source, "counts": dict(counts),
        "lengths": length_stats(prefs, cfg.model),
        "origins": dict(Counter(p["origin"] for p in prefs)),
        "truncation": {**truncation, "dropped": len(rejects), "drop_truncated": cfg.export.drop_truncated},
    }
    if prefs and prefs[0]["p_chosen"] is not None:
        summary["mean_p_chosen"] = round(statistics.fmean(p["p_chosen"] for p in prefs), 4)
    summary["audit_overlap"] = audit_overlap(ctx)
    judge_md = judge_section(judged, store.read_rejects("judge")) if source == "judge" else ""
    atomic_write_text(layout.card, dataset_card(cfg, ctx.assets.constitution, ctx.manifest, summary, judge_md))
    summary["rows"] = sum(summary["sft"].values()) + sum(summary["preferences"].values())
    return summary


def audit_overlap(ctx: RunContext) -> dict | None:
    """How many of the audit's prompts share a word n-gram with the train split just written (the card says
    it; the audit drops or flags them: audit/decontam.py). A log the audit will read that cannot be read yet
    is no reason to fail the export: the card says so."""
    from cai_pipeline.audit.decontam import card_report
    from cai_pipeline.errors import UserError

    try:
        return card_report(ctx.cfg, ctx.store.layout, ctx.assets.prompts.rows)
    except UserError as e:
        return {"error": str(e)}


def summary_line(summary: dict) -> tuple[str, str]:
    """(out, details) of the stage's summary for the run's summary table: "44 train / 4 test" per dataset."""
    def splits(counts) -> str:
        return " / ".join(f"{n} {split}" for split, n in counts.items()) if isinstance(counts, dict) else "—"

    return str(summary.get("rows", "")), (f"sft {splits(summary.get('sft'))}; "
                                          f"preferences {splits(summary.get('preferences'))}")
