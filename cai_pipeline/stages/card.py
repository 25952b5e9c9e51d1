"""The dataset card (datasets/README.md): what made the data, how much there is, and its length statistics.

Chosen vs rejected length is in the card on purpose: DPO is known to reward length, and a preference set
whose chosen side is systematically longer teaches exactly that. The card makes it visible at a glance.
"""

from __future__ import annotations

import json
import statistics

from cai_pipeline import __version__


def _counter(model: str):
    """Token counts with the model's tokenizer where it is local; whitespace words otherwise."""
    try:
        from transformers import AutoTokenizer

        from cai_pipeline.models import resolve_model

        tok = AutoTokenizer.from_pretrained(resolve_model(model))
        return (lambda text: len(tok.encode(text, add_special_tokens=False))), "tokens"
    except Exception:  # a served model name with no local tokenizer: fall back rather than fail the export
        return (lambda text: len(text.split())), "words"


def _describe(values: list[int]) -> dict:
    if not values:
        return {"mean": 0, "median": 0, "max": 0}
    return {"mean": round(statistics.fmean(values), 1), "median": statistics.median(values), "max": max(values)}


def length_stats(prefs: list[dict], model: str) -> dict:
    count, unit = _counter(model)
    chosen = [count(p["chosen"][-1]["content"]) for p in prefs]
    rejected = [count(p["rejected"][-1]["content"]) for p in prefs]
    longer = sum(c > r for c, r in zip(chosen, rejected))
    return {"unit": unit, "chosen": _describe(chosen), "rejected": _describe(rejected),
            "chosen_longer_rate": round(longer / len(prefs), 3) if prefs else None}


def _front_matter() -> str:
    configs = [{"config_name": name, "data_files": [{"split": s, "path": f"{name}/{s}-*.parquet"}
                                                    for s in ("train", "test")]}
               for name in ("preferences", "sft")]
    lines = ["---", "configs:"]
    for c in configs:
        lines.append(f"- config_name: {c['config_name']}")
        lines.append("  data_files:")
        lines += [f"  - split: {f['split']}\n    path: {f['path']}" for f in c["data_files"]]
    return "\n".join([*lines, "---", ""])


def _lengths_table(lengths: dict) -> str:
    unit = lengths["unit"]
    rows = [f"| side | mean {unit} | median | max |", "|---|---:|---:|---:|"]
    for side in ("chosen", "rejected"):
        d = lengths[side]
        rows.append(f"| {side} | {d['mean']} | {d['median']} | {d['max']} |")
    return "\n".join(rows) + f"\n\nChosen is the longer side in {lengths['chosen_longer_rate']} of pairs."


def dataset_card(store, cfg, constitution, summary: dict) -> str:
    manifest = store.read_manifest() or {}
    judge_md = ""
    if summary["preferences_from"] == "judge":
        from cai_pipeline.stages.judge import card_section

        judge_md = card_section(store.read_stage("judge"), store.read_rejects("judge"))
    parts = [
        _front_matter(),
        f"# Constitutional AI datasets: {cfg.out_dir}\n",
        f"Made by cai-pipeline {__version__} (git {manifest.get('git_sha') or 'unknown'}) from model "
        f"`{cfg.model}` with seed {cfg.seed}.\n",
        f"Constitution: **{constitution.name}** v{constitution.version}, sha256 "
        f"`{manifest.get('constitution_sha256', '')}`, {len(constitution.principles)} principles; "
        f"{cfg.revise.rounds} critique→revision rounds per response.\n",
        "## Contents\n",
        f"- `sft/`: {json.dumps(summary['sft'])} rows — `messages` is the prompt plus the final revision.",
        f"- `preferences/`: {json.dumps(summary['preferences'])} rows — TRL's conversational prompt/chosen/"
        f"rejected, from {summary['preferences_from']}; origins {json.dumps(summary['origins'])}.",
        "- Train/test are split by `prompt_id`: no prompt is in both.\n",
        "## Length of chosen vs rejected\n", _lengths_table(summary["lengths"]) + "\n",
        judge_md,
        "## Rejected rows\n",
        "Every dropped row is in `../rejects/<stage>/` with its reason. Counts by stage:\n",
        *[f"- {name}: {json.dumps(s.get('rejected', {}))}" for name, s in manifest.get("stages", {}).items()],
        "",
    ]
    return "\n".join(parts)
