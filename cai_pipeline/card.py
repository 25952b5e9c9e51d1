"""The dataset card (datasets/README.md): what made the data, how much there is, its length statistics, and how
sure and consistent the judge was.

Chosen vs rejected length is in the card on purpose: DPO is known to reward length, and a preference set
whose chosen side is systematically longer teaches exactly that. The card makes it visible at a glance.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter

from cai_pipeline import __version__
from cai_pipeline.judging import order_average, picks_same_position


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


def _truncation_md(t: dict) -> str:
    """Unfinished responses (hit max_tokens), counted before any were dropped."""
    fate = (f"{t['dropped']} rows with an unfinished response went to `../rejects/export/` (reason `truncated`; "
            "export.drop_truncated is on)" if t["drop_truncated"] else
            "they are kept and flagged (`truncated`, `chosen_truncated`, `rejected_truncated`); export.drop_truncated "
            "is off")
    return (f"- SFT: {t['sft_truncated']} final responses hit max_tokens (rate {t['sft_truncated_rate']})\n"
            f"- Preferences: chosen {t['chosen_truncated']} (rate {t['chosen_truncated_rate']}), rejected "
            f"{t['rejected_truncated']} (rate {t['rejected_truncated_rate']})\n- {fate}.\n")


def dataset_card(cfg, constitution, manifest: dict, summary: dict, judge_md: str) -> str:
    """The card's Markdown. `judge_md` is `judge_section(...)` where the judge ran, else ""."""
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
        "## Truncated responses\n", _truncation_md(summary["truncation"]),
        _self_judging(manifest), judge_md, _held_out(summary.get("audit_overlap")),
        "## Rejected rows\n",
        "Every dropped row is in `../rejects/<stage>/` with its reason. Counts by stage:\n",
        *([f"- prompts (before sampling; near_duplicate names the prompt it repeats): "
           f"{json.dumps(manifest['prompts']['rejected'])}"] if manifest.get("prompts", {}).get("rejected") else []),
        *[f"- {name}: {json.dumps(s['rejected'])}" for name, s in manifest.get("stages", {}).items() if "rejected" in s],
        "",
    ]
    return "\n".join(parts)


def _held_out(report: dict | None) -> str:
    """The audit's prompts against this train split (audit/decontam.py), as it stood at export."""
    if not report:
        return ""
    if "error" in report:
        return f"## Audit prompts vs training prompts\n\nNot checked: {report['error']}.\n"
    per = "; ".join(f"{source}: {count}" for source, count in report["overlapping"].items())
    action = {"drop": "the audit drops them", "flag": "the audit keeps and flags them"}[report["mode"]]
    return (f"## Audit prompts vs training prompts\n\nOf the {report['checked']} prompts the audit may ask, these "
            f"share a word {report['n']}-gram with (per source) {per}; {action} (audit.decontaminate). The "
            "audit's own README has the final counts.\n")


def _self_judging(manifest: dict) -> str:
    """The run's self-judging warning (judge_roles.py), where its judge graded its own model's samples."""
    line = (manifest.get("judge_warnings") or {}).get("judge")
    return f"## Warning: the judge graded its own model\n\n{line[0].upper()}{line[1:]}.\n" if line else ""


# ---------------------------------------------------------------------------------------------------------
# The dataset card's judge section


def _rate(num: float, den: float) -> str:
    return f"{num / den:.3f}" if den else "n/a"


def _scored_rows(judge_rows: list[dict], judge_rejects: list[dict]) -> list[dict]:
    """Every pair the judge scored: the kept rows plus the rejected ones that carry a verdict."""
    rejected = [json.loads(r["row"]) for r in judge_rejects]
    return list(judge_rows) + [r for r in rejected if "p_a" in r]


def principle_table(scored: list[dict]) -> str:
    """Per principle: its verdicts, how often its two orders agree, how often it sides with the ensemble
    label, and how often it prefers the revision in revision pairs."""
    stats: dict[str, Counter] = {}
    for row in scored:
        for v in row["verdicts"]:
            s = stats.setdefault(v["principle_id"], Counter())
            p = order_average(v["p_a_first"], v["p_a_second"])
            s["n"] += 1
            s["consistent"] += not picks_same_position(v["p_a_first"], v["p_a_second"])
            s["agrees"] += (p > 0.5) == (row["p_a"] > 0.5)
            if row["origin"] == "revision":
                s["rev_n"] += 1
                s["rev_wins"] += p > 0.5
    lines = ["| principle | verdicts | order-consistent | agrees with ensemble | revision wins |",
             "|---|---:|---:|---:|---:|"]
    for pid, s in sorted(stats.items()):
        lines.append(f"| {pid} | {s['n']} | {_rate(s['consistent'], s['n'])} | {_rate(s['agrees'], s['n'])} | "
                     f"{_rate(s['rev_wins'], s['rev_n'])} |")
    return "\n".join(lines)


def label_sources(judge_rows: list[dict]) -> dict[str, int]:
    """Kept labels counted by where their verdicts came from (check, judge or mixed)."""
    return dict(sorted(Counter(r.get("label_source") or "judge" for r in judge_rows).items()))


def judge_section(judge_rows: list[dict], judge_rejects: list[dict]) -> str:
    """Markdown for datasets/README.md: how sure and how consistent the judge was, and whether it agrees with
    the recipe's assumption that a revision beats the response it revised."""
    scored = _scored_rows(judge_rows, judge_rejects)
    reasons = Counter(r["reason"] for r in judge_rejects)
    revision = [r for r in scored if r["origin"] == "revision"]
    margin_kept = sum(abs(r["p_a"] - 0.5) for r in judge_rows)
    lines = [
        "## Judge\n",
        f"{len(scored)} pairs scored in both orders; {len(judge_rows)} kept as labels. "
        "p(a≻b) = ½·(P(A | a first) + P(B | a second)), averaged over the principles drawn for the pair.\n",
        f"- Order-consistency rate: {_rate(sum(bool(r['consistent']) for r in scored), len(scored))} "
        "(both orders of every principle pick the same response)",
        f"- Mean margin |p − 0.5|: {_rate(margin_kept, len(judge_rows))} kept, "
        f"{_rate(sum(abs(r['p_a'] - 0.5) for r in scored), len(scored))} all scored",
        f"- Revision preferred over the initial response: {_rate(sum(r['p_a'] > 0.5 for r in revision), len(revision))} "
        f"of {len(revision)} revision pairs (the HF recipe assumes 1.0)",
        f"- Labels by source: {json.dumps(label_sources(judge_rows))} (check: every verdict from a principle's "
        "check, exact; judge: every verdict from the LLM; mixed: both)",
        f"- Rejected by the judge: {json.dumps(dict(sorted(reasons.items())))}\n",
        principle_table(scored) + "\n",
    ]
    return "\n".join(lines)
