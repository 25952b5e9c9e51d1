"""Export: the run's shards become datasets — SFT (prompt + final revision) and preferences (TRL's
conversational prompt/chosen/rejected) — split train/test by prompt_id, with a dataset card.

Export reads every finished shard and rewrites datasets/ atomically each time it runs, so it is cheap to
repeat and always matches the shards on disk.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from cai_pipeline.records import PreferenceRecord, SFTRecord
from cai_pipeline.rng import derive_seed
from cai_pipeline.store import RunStore, atomic_write_text, write_parquet


def test_prompts(prompt_ids: set[str], fraction: float) -> set[str]:
    """The prompts of the test split: the `fraction` of prompts whose hashed ids come first (at least one
    where there are two or more prompts and fraction > 0). Every row of a prompt lands in the same split."""
    if fraction <= 0 or len(prompt_ids) < 2:
        return set()
    ranked = sorted(prompt_ids, key=lambda pid: derive_seed(0, "split", pid))
    return set(ranked[: max(1, round(fraction * len(ranked)))])


def sft_rows(revised: list[dict]) -> list[dict]:
    return [{"prompt_id": r["prompt_id"], "sample_idx": r["sample_idx"],
             "messages": [*r["prompt"], {"role": "assistant", "content": r["final"]}],
             "principle_ids": [x["principle_id"] for x in r["rounds"]]} for r in revised]


def preference_row(pair: dict) -> dict:
    """A judged pair (has p_a) is oriented by the verdict; an unjudged revision pair takes the revision."""
    p_a = pair.get("p_a")
    a_wins = p_a is None or p_a > 0.5
    chosen, rejected = (pair["a"], pair["b"]) if a_wins else (pair["b"], pair["a"])
    return {"pair_id": pair["pair_id"], "prompt_id": pair["prompt_id"], "prompt": pair["prompt"],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "p_chosen": None if p_a is None else (p_a if a_wins else 1.0 - p_a),
            "principle_ids": list(pair.get("principle_ids") or [v["principle_id"] for v in pair.get("verdicts", [])]),
            "origin": pair["origin"]}


def preference_rows(store: RunStore, counts: Counter) -> tuple[list[dict], str]:
    """Judged pairs where the judge ran; otherwise revision pairs, unlabelled (sampled pairs need a judge)."""
    if store.shard_indices("judge"):
        return [preference_row(p) for p in store.read_stage("judge")], "judge"
    pairs = store.read_stage("pairs")
    unlabelled = [p for p in pairs if p["origin"] == "sampled"]
    counts["sampled_pairs_without_judge"] = len(unlabelled)
    return [preference_row(p) for p in pairs if p["origin"] == "revision"], "pairs"


def write_splits(folder: Path, rows: list[dict], model, held_out: set[str]) -> dict[str, int]:
    splits = {"train": [], "test": []}
    for row in rows:
        splits["test" if row["prompt_id"] in held_out else "train"].append(row)
    for name, part in splits.items():
        write_parquet(folder / f"{name}-00000-of-00001.parquet", part, model)
    return {name: len(part) for name, part in splits.items()}


def export(store: RunStore, cfg, constitution) -> dict:
    from cai_pipeline.stages.card import dataset_card, length_stats

    out = store.root / "datasets"
    counts: Counter = Counter()
    sft = sft_rows(store.read_stage("revise"))
    prefs, source = preference_rows(store, counts)
    # One split for both datasets, so a prompt held out of SFT is held out of preference training too.
    held_out = test_prompts({r["prompt_id"] for r in sft + prefs}, cfg.export.test_fraction)
    summary = {
        "sft": write_splits(out / "sft", sft, SFTRecord, held_out),
        "preferences": write_splits(out / "preferences", prefs, PreferenceRecord, held_out),
        "preferences_from": source, "counts": dict(counts),
        "lengths": length_stats(prefs, cfg.model),
        "origins": dict(Counter(p["origin"] for p in prefs)),
    }
    if prefs and prefs[0]["p_chosen"] is not None:
        summary["mean_p_chosen"] = round(statistics.fmean(p["p_chosen"] for p in prefs), 4)
    atomic_write_text(out / "README.md", dataset_card(store, cfg, constitution, summary))
    return summary
