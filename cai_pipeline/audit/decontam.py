"""Held-out sets that are held out: the audit's prompts checked for word n-gram overlap (ngrams.py; n =
audit.decontaminate_n, 8 as Tulu 3 and open-r1) against the run's training prompts and any eval files named
(audit.eval_files). An overlapping prompt is dropped from the audit, a reject naming the prompt it overlaps
(audit.decontaminate=drop), or kept and listed (flag); the counts per source go to summary.json, the audit
README, the dataset card and the report.

The run's training prompts are those of its train splits (preferences and SFT) once it has exported; before
that, every prompt of its prompt set (none has been held out yet, so all of them may be trained on).
"""

from __future__ import annotations

from pathlib import Path

from cai_pipeline.ngrams import overlaps, prompt_text
from cai_pipeline.records import make_reject
from cai_pipeline.store import RunLayout, read_parquet

TRAINING = "training prompts"


def training_prompts(layout: RunLayout, run_prompts: list[dict]) -> list[list[dict]]:
    """The prompt messages the run trains on: its train splits, else its whole prompt set."""
    found = []
    for name, column in (("preferences", "prompt"), ("sft", "messages")):
        path = layout.split_file(name, "train")
        for r in read_parquet(path) if path.exists() else []:
            found.append(r[column] if column == "prompt" else r[column][:-1])  # sft: without the revision
    return found if found or layout.split_file("preferences", "train").exists() else [r["prompt"] for r in run_prompts]


def reference_sources(cfg, layout: RunLayout, run_prompts: list[dict]) -> dict[str, list[str]]:
    """{source name: its prompt texts}: the run's training prompts, then each eval file."""
    from cai_pipeline.inputs import load_prompts

    sources = {TRAINING: [prompt_text(m) for m in training_prompts(layout, run_prompts)]}
    for path in cfg.audit.eval_files:
        sources[Path(path).name] = [prompt_text(r["prompt"]) for r in load_prompts(path).rows]
    return sources


def decontaminate(prompts: list[dict], sources: dict[str, list[str]], n: int,
                  mode: str) -> tuple[list[dict], list[dict], dict]:
    """(prompts kept, rejects, report): report = {mode, n, checked, overlapping: {source: prompts}, dropped,
    flagged: [prompt_id]}. A prompt overlapping several sources counts once in each."""
    report = {"mode": mode, "n": n, "checked": len(prompts), "overlapping": {}, "dropped": 0, "flagged": []}
    if mode == "off":
        return prompts, [], report
    texts = [prompt_text(p["prompt"]) for p in prompts]
    hit: dict[int, tuple[str, str]] = {}  # prompt index → (source, the text it overlaps), first source first
    for source, reference in sources.items():
        found = overlaps(texts, reference, n)
        report["overlapping"][source] = len(found)
        for i, j in found.items():
            hit.setdefault(i, (source, reference[j]))
    rejects = [make_reject("audit", prompts[i]["prompt_id"], "contaminated",
                           f"shares a word {n}-gram with {source}: {text[:120]!r}", prompts[i])
               for i, (source, text) in sorted(hit.items())]
    if mode == "flag":
        report["flagged"] = [prompts[i]["prompt_id"] for i in sorted(hit)]
        return prompts, [], report
    report["dropped"] = len(hit)
    return [p for i, p in enumerate(prompts) if i not in hit], rejects, report


def card_report(cfg, layout: RunLayout, run_prompts: list[dict]) -> dict | None:
    """The decontamination report of the audit's prompts as configured (a log's, audit.prompts, or the
    held-out and bundled sets) against the run's train split and eval files: for the dataset card, written
    at export, before any audit. None when decontamination is off."""
    from cai_pipeline.audit.logs import log_prompts, read_log
    from cai_pipeline.audit.prompts import candidate_prompts

    a = cfg.audit
    if a.decontaminate == "off":
        return None
    logs = [p for p in (a.responses, a.baseline_responses) if p]
    rows = (log_prompts(*[[r.as_dict() for r in read_log(p, "audit.responses")[0]] for p in logs]) if logs
            else candidate_prompts(cfg, layout)[0])
    return decontaminate(rows, reference_sources(cfg, layout, run_prompts), a.decontaminate_n, a.decontaminate)[2]
