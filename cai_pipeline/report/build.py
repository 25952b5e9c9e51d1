"""The report's data: one run folder gathered into one JSON document (plus its traces, embedded apart so the
page can parse them only when they are opened). Everything here is read from the folder as the run left
it: the manifest, the constitution snapshot, the shards, rejects/, datasets/, train/metrics.jsonl,
audit/summary.json and rounds/*/ — nothing is recomputed that a stage already counted.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from cai_pipeline import stages as stage_list
from cai_pipeline.audit.stats import CHECK_KEYS
from cai_pipeline.audit.summary import AuditSummary, read_summary
from cai_pipeline.errors import UserError
from cai_pipeline.judging import order_average, picks_same_position
from cai_pipeline.report.reuse_marks import mark_reuse
from cai_pipeline.report.review import review_items, scored_pairs
from cai_pipeline.report.traces import Principles, RunRows, build_traces, read_rows
from cai_pipeline.rng import stable_id
from cai_pipeline.store import RunStore, TrainLayout, open_run, read_parquet

SCHEMA = 1
PREVIEW = 100  # characters of a prompt shown in the trace list


def build_document(path: str | Path) -> tuple[dict, list[dict]]:
    """(the report document, the traces) of the run folder at `path`."""
    store = open_run(path)
    manifest = store.read_manifest()
    warnings: list[str] = []
    constitution = load_snapshot(store, warnings)
    principles = Principles(p["id"] for p in (constitution or {}).get("principles", []))
    rows = read_rows(store)
    traces, rejects = build_traces(rows, principles)
    mark_reuse(store, manifest, traces)  # a --reuse run: which chains came from the old run
    doc = {
        "schema": SCHEMA, "title": store.root.resolve().name,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": run_info(manifest), "config": manifest.get("config", {}), "constitution": constitution,
        "funnel": funnel(manifest, rows.rejects), "run_stages": run_stages(manifest),
        "plan": planned_vs_actual(manifest),
        "judge": judge_stats(rows), "datasets": dataset_stats(manifest, rows),
        "training": training(store, manifest, warnings), "audit": audit(store, warnings),
        "rounds": rounds(store, warnings), "rejects": rejects,
        "judge_check": judge_check(store, warnings), "review": review(store, manifest, constitution, rows),
    }
    doc["facets"], doc["index"] = index(traces, principles)  # last: every principle has been seen by now
    doc["warnings"] = warnings
    return doc, traces


# ---------------------------------------------------------------------------------------------------------
# Overview


def run_info(manifest: dict) -> dict:
    keys = ("model", "judge_model", "seed", "git_sha", "version", "created", "updated", "out_dir",
            "constitution_sha256", "prompts_sha256", "template_sha256", "last_run", "engine_stats", "prompts")
    return {k: manifest[k] for k in keys if k in manifest}


def load_snapshot(store: RunStore, warnings: list[str]) -> dict | None:
    """The constitution exactly as the run used it (constitution.yaml beside the data)."""
    from cai_pipeline.constitution import load_constitution

    path = store.layout.constitution
    if not path.exists():
        return None
    try:
        c = load_constitution(path)
    except UserError as e:
        warnings.append(f"the constitution snapshot could not be read: {e}")
        return None
    return {"name": c.name, "version": c.version, "description": c.description,
            "principles": [p.model_dump(mode="json") for p in c.principles]}


def funnel(manifest: dict, rejects: list[dict]) -> list[dict]:
    """Rows in, out and rejected by reason, stage by stage: the manifest's own totals. A run-scope stage that
    drops rows (export's truncated rows) has no in/out totals, only its rejects."""
    out = []
    prompts = manifest.get("prompts")
    if prompts:
        rejected = prompts.get("rejected", {})
        out.append({"stage": "prompts", "in": prompts.get("kept", 0) + sum(rejected.values()),
                    "out": prompts.get("kept", 0), "rejected": rejected, "counts": {}})
    stages = manifest.get("stages", {})
    for name in (stage.name for stage in stage_list.sharded()):
        s = stages.get(name)
        if s and "shards_total" in s:
            out.append({"stage": name, **{k: s.get(k) for k in ("in", "out", "seconds", "output_tokens",
                                                                  "shards_done", "shards_total")},
                        "rejected": s.get("rejected", {}), "counts": s.get("counts", {})})
    for name, s in stages.items():
        dropped = Counter(r["reason"] for r in rejects if r["stage"] == name)
        if "shards_total" not in s and dropped:
            out.append({"stage": name, "in": None, "out": None, "rejected": dict(dropped), "counts": {},
                        "seconds": s.get("seconds")})
    return out


def planned_vs_actual(manifest: dict) -> list[dict]:
    """Per planned stage: what `cai plan` expected when the run started (manifest["plan"]) and what it did."""
    plan = manifest.get("plan", {}).get("stages", {})
    keys = ("requests", "output_tokens", "seconds")
    out = []
    for name, expected in plan.items():
        done = manifest.get("stages", {}).get(name, {})
        out.append({"stage": name, "planned": {k: expected.get(k) for k in keys},
                    "actual": {k: done.get(k) for k in keys} if "shards_total" in done else None})
    return out


def run_stages(manifest: dict) -> dict:
    """Run-scope stages (export, train, audit, …): their summaries as recorded."""
    return {name: {"seconds": s.get("seconds"), "summary": s.get("summary", {})}
            for name, s in manifest.get("stages", {}).items() if "shards_total" not in s}


# ---------------------------------------------------------------------------------------------------------
# The judge


def judge_stats(rows: RunRows) -> dict | None:
    scored = scored_pairs(rows)
    if not scored:
        return None
    per: dict[str, Counter] = {}
    margins: dict[str, list[float]] = {}
    for pair in scored:
        for v in pair["verdicts"]:
            c = per.setdefault(v["principle_id"], Counter())
            p = v["p_a_first"] if v["p_a_second"] is None else order_average(v["p_a_first"], v["p_a_second"])
            c["verdicts"] += 1
            if v["p_a_second"] is not None:
                c["both_orders"] += 1
                c["consistent"] += not picks_same_position(v["p_a_first"], v["p_a_second"])
            margins.setdefault(v["principle_id"], []).append(abs(p - 0.5))
            if pair["origin"] == "revision":
                c["revision"] += 1
                c["revision_wins"] += p > 0.5
    hist = Counter(min(int(p["p_a"] * 10), 9) for p in scored)
    revision = [p for p in scored if p["origin"] == "revision"]
    return {
        "scored": len(scored), "kept": len(rows.judged),
        "consistent": sum(bool(p["consistent"]) for p in scored),
        "revision": len(revision), "revision_wins": sum(p["p_a"] > 0.5 for p in revision),
        "mean_margin": round(statistics.fmean(abs(p["p_a"] - 0.5) for p in scored), 4),
        "histogram": [hist.get(i, 0) for i in range(10)],
        "principles": {pid: {**c, "mean_margin": round(statistics.fmean(margins[pid]), 4)} for pid, c in per.items()},
    }


def judge_check(store: RunStore, warnings: list[str]) -> dict | None:
    """judge-check/summary.json (`cai judge-check CONFIG`), as its typed model reads it."""
    from cai_pipeline.judge_check.summary import read_check

    try:
        summary = read_check(store.layout.judge_check.summary)
    except UserError as e:
        warnings.append(f"{e}; the judge check is left out")
        return None
    return None if summary is None else summary.model_dump(mode="json")


def review(store: RunStore, manifest: dict, constitution: dict | None, rows: RunRows) -> dict | None:
    """The Review tab's verdicts (report/review.py): a stratified sample, with what an export line needs."""
    questions = {p["id"]: p["comparison"] for p in (constitution or {}).get("principles", [])}
    items = review_items(scored_pairs(rows), questions)
    if not items:
        return None
    root = str(store.root.resolve())
    return {"run": root, "judge": manifest.get("judge_model") or manifest.get("model") or "", "key": stable_id(root),
            "items": items}


# ---------------------------------------------------------------------------------------------------------
# Datasets


def _describe(values: list[int]) -> dict:
    if not values:
        return {"n": 0, "mean": 0, "median": 0, "max": 0}
    return {"n": len(values), "mean": round(statistics.fmean(values), 1), "median": statistics.median(values),
            "max": max(values)}


def dataset_stats(manifest: dict, rows: RunRows) -> dict:
    prefs = [r for split in rows.prefs.values() for r in split]
    chosen = [len(r["chosen"][-1]["content"].split()) for r in prefs]
    rejected = [len(r["rejected"][-1]["content"].split()) for r in prefs]
    stages = manifest.get("stages", {})
    revise_counts = stages.get("revise", {}).get("counts", {})
    export = stages.get("export", {}).get("summary", {})
    return {
        "splits": {"sft": {k: len(v) for k, v in rows.sft.items()},
                   "preferences": {k: len(v) for k, v in rows.prefs.items()}},
        "words": {"chosen": _describe(chosen), "rejected": _describe(rejected),
                  "chosen_longer": sum(c > r for c, r in zip(chosen, rejected))},
        "export_lengths": export.get("lengths"),
        "truncation": {
            "samples": len(rows.samples), "samples_cut": sum(r["finish_reason"] == "length" for r in rows.samples),
            "rounds": revise_counts.get("rounds", 0), "critiques_cut": revise_counts.get("truncated_critique", 0),
            "revisions_cut": revise_counts.get("truncated_revision", 0),
            "pref_rows": len(prefs), "pref_chosen_cut": sum(bool(r.get("chosen_truncated")) for r in prefs),
            "pref_rejected_cut": sum(bool(r.get("rejected_truncated")) for r in prefs),
            "export": export.get("truncation"),  # before export.drop_truncated, and how many it dropped
        },
    }


# ---------------------------------------------------------------------------------------------------------
# Training, audit, rounds


def training(store: RunStore, manifest: dict, warnings: list[str]) -> dict | None:
    """Curves from metrics.jsonl: training rows by step, and the evals (keys eval/…) beside them."""
    from cai_pipeline.train.plots import read_metrics

    summary = manifest.get("stages", {}).get("train", {}).get("summary", {})
    log_dir = Path(summary["log_dir"]) if summary.get("log_dir") else store.layout.train_dir
    if not log_dir.is_dir():
        log_dir = store.layout.train_dir
    path = TrainLayout(log_dir, store.layout.checkpoint, store.layout.rejects("train", 0)).metrics
    if not path.exists():
        return None
    try:
        metrics = read_metrics(path)
    except json.JSONDecodeError as e:
        warnings.append(f"{path}: line {e.lineno} is not JSON; training curves are left out")
        return None
    series: dict[str, list] = {}
    for row in metrics:
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(key, []).append([row["step"], round(value, 6)])
    return {"series": series, "summary": {k: v for k, v in summary.items() if not isinstance(v, dict | list)}}


AUDIT_KEYS = ("win_rate", "ci_low", "ci_high", "lc_win_rate", "sc_win_rate", "sc_ci_low", "sc_ci_high", "consistency",
              "n")
AUDIT_OVERALL = (*AUDIT_KEYS, "lc_ci_low", "lc_ci_high", "refusal_rate_model", "refusal_rate_baseline",
                 "mean_length_change", "mean_length_model", "mean_length_baseline")


def _numbers(entry: object, keys: tuple[str, ...]) -> dict:
    entry = entry if isinstance(entry, dict) else {}
    return {k: entry[k] for k in keys if isinstance(entry.get(k), int | float) and not isinstance(entry.get(k), bool)}


def read_audit(store: RunStore, warnings: list[str]) -> AuditSummary | None:
    """audit/summary.json as its typed model; a file that is not one is left out with a warning."""
    try:
        return read_summary(store.layout.audit_summary)
    except UserError as e:
        warnings.append(f"{e}; the audit is left out")
        return None


def audit(store: RunStore, warnings: list[str]) -> dict | None:
    """audit/summary.json (issue 13's contract), numbers only: per principle and overall."""
    data = read_audit(store, warnings)
    if data is None:
        return None
    dumped = data.model_dump()
    return {"principles": {pid: _numbers(v, AUDIT_KEYS) for pid, v in dumped["principles"].items()},
            "overall": _numbers(dumped["overall"], AUDIT_OVERALL), **compliance(store, data),
            **({"checks": {pid: _numbers(v, (*CHECK_KEYS, "n")) for pid, v in dumped["checks"].items()}}
               if dumped.get("checks") else {}),
            **{k: dumped[k] for k in ("decontamination", "implicit_reward") if dumped.get(k) is not None}}


def compliance(store: RunStore, data: AuditSummary) -> dict:
    """Pointwise compliance for the report: rates, drift, and the likeliest violations with their texts (the
    audited response's trace: its prompt and response from audit/responses.parquet)."""
    if not data.compliance:
        return {}
    path = store.layout.audit_responses
    texts = {(r["side"], r["prompt_id"], r["sample_idx"]): r for r in (read_parquet(path) if path.exists() else [])}
    worst = {pid: [{"prompt_id": w.prompt_id, "sample_idx": w.sample_idx, "p": w.p_violation,
                    "prompt": [[m["role"], m["content"]] for m in texts.get((w.side, w.prompt_id, w.sample_idx),
                                                                           {}).get("prompt", [])],
                    "response": texts.get((w.side, w.prompt_id, w.sample_idx), {}).get("response", "")}
                   for w in rows] for pid, rows in data.worst.items()}
    return {"compliance": {pid: c.model_dump() for pid, c in data.compliance.items()},
            "compliance_baseline": {pid: c.model_dump() for pid, c in data.compliance_baseline.items()},
            "drift": {pid: d.model_dump() for pid, d in data.drift.items()}, "worst": worst}


def rounds(store: RunStore, warnings: list[str]) -> list[dict]:
    """Each round folder (rounds/NN-kind/, a run of its own), summarised for a side-by-side table."""
    out = []
    gates = iterate_gates(store, warnings)
    for folder in store.layout.round_dirs():
        sub = RunStore(folder)
        try:
            manifest = sub.read_manifest() or {}
        except UserError as e:
            warnings.append(str(e))
            manifest = {}
        stages = manifest.get("stages", {})
        samples = sub.read_stage("sample")
        judge = stages.get("judge", {}).get("counts", {})
        out.append({
            "name": folder.name, "model": manifest.get("model"),
            "report": f"rounds/{folder.name}/report.html" if sub.layout.report.exists() else None,
            "samples": len(samples),
            "mean_words": round(statistics.fmean(len(r["response"].split()) for r in samples), 1) if samples else None,
            "revision_preferred": [judge.get("revision_preferred", 0), judge.get("revision_pairs", 0)],
            "audit": audit(sub, warnings), "gate": gates.get(folder.name),
        })
    return out


def iterate_gates(store: RunStore, warnings: list[str]) -> dict[str, dict]:
    """`cai iterate`'s gate decision per round name, and the round's LC win rate over the base model, from
    iterate.json (when the run has one)."""
    path = store.layout.iterate_manifest
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        rounds = record["rounds"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        warnings.append(f"{path}: not an iterate record; the gate decisions are left out")
        return {}
    best = (record.get("best") or {}).get("round")
    return {str(r["name"]): {"passed": r["gate"]["passed"] if isinstance(r.get("gate"), dict) else None,
                             "reason": str((r.get("gate") or {}).get("reason", "not gated")),
                             "best": r["name"] == best,
                             "vs_base": _numbers(r.get("audit_vs_base"), ("lc_win_rate", "lc_ci_low", "lc_ci_high"))}
            for r in rounds if isinstance(r, dict) and "name" in r}


# ---------------------------------------------------------------------------------------------------------
# The trace index: what the list and its filters need without opening a trace


def index(traces: list[dict], principles: Principles) -> tuple[dict, list[list]]:
    """facets: the values each filter offers; index: per trace [id, preview, principle, origin, reason, split
    positions]. A trace matches a principle when any of its critique rounds or judge verdicts drew it."""
    facets: dict[str, list[str]] = {"origin": [], "reason": [], "split": []}
    pos: dict[str, dict[str, int]] = {k: {} for k in facets}

    def at(kind: str, value: str) -> int:
        if value not in pos[kind]:
            pos[kind][value] = len(facets[kind])
            facets[kind].append(value)
        return pos[kind][value]

    out = []
    for t in traces:
        drew = {r["p"] for s in t["samples"] for r in s.get("rounds", [])}
        drew |= {v[0] for p in t["pairs"] for v in p.get("verdicts", [])}
        marks = [s["reject"] for s in t["samples"] if "reject" in s] + [p["reject"] for p in t["pairs"] if "reject" in p]
        reasons = {f"{m[0]}: {m[1]}" for m in marks} | {f"{r[0]}: {r[2]}" for r in t["rejects"]}
        splits = {s["sft"] for s in t["samples"] if "sft" in s} | {p["pref"][0] for p in t["pairs"] if "pref" in p}
        last_user = next((c for role, c in reversed(t["prompt"]) if role == "user"), t["prompt"][-1][1] if t["prompt"] else "")
        origins = {p["origin"] for p in t["pairs"] if p.get("origin")}
        out.append([t["id"], " ".join(last_user.split())[:PREVIEW], sorted(drew),
                    sorted(at("origin", o) for o in origins), sorted(at("reason", r) for r in reasons),
                    sorted(at("split", s) for s in (splits or {"none"}))])
    facets["principle"] = principles.ids
    return facets, out
