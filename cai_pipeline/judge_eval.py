"""Judge evaluation: run the judge on pairs that people labelled, and say how often it agrees with them
(`cai judge-eval`); or read the labels a person gave in a run report's Review tab, beside the run judge's own
verdicts, and say the same (no model is loaded then). Both report agreement, Cohen's κ with an interval and
calibration, overall and per principle (agreement.py).

Reads Anthropic's hh-rlhf format (`chosen`/`rejected` transcripts that share every turn but the last) or a
generic JSONL/Parquet with `prompt`/`chosen`/`rejected`. Which side is shown as `a` is drawn per row from a
seeded RNG: if the human-preferred side were always first, a judge that always picks the first position would
score 100%. The report says how far position still matters (first-position rate, per single-order verdict) and
how much asking both orders buys (accuracy of the a-first order alone vs both orders).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from cai_pipeline.agreement import agreement
from cai_pipeline.engines.base import Failure
from cai_pipeline.errors import UserError
from cai_pipeline.inputs import hh_split, read_rows
from cai_pipeline.rng import rng_for, stable_id

_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
_EXAMPLE = "each row needs chosen and rejected (hh-rlhf transcripts) or prompt, chosen and rejected"


# ---------------------------------------------------------------------------------------------------------
# Reading labelled pairs


def _reply(where: str, field: str, value) -> str:
    """A response given as a string, or as chat messages whose last turn is the assistant's."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        return str(value[-1].get("content", ""))
    raise UserError(f"{where}: '{field}' must be a string or a list of messages ending with the assistant's turn")


def _prompt(where: str, value):
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise UserError(f"{where}: 'prompt' must be a string or a list of {{role, content}} messages")


def labelled_pair(where: str, obj: dict) -> tuple[dict | None, str]:
    """(pair with prompt/chosen/rejected, '') or (None, skip reason) for one row; a malformed row is a UserError."""
    if not isinstance(obj.get("chosen"), str | list) or not isinstance(obj.get("rejected"), str | list):
        raise UserError(f"{where}: missing 'chosen' or 'rejected'; {_EXAMPLE}")
    if obj.get("prompt") is None:
        if not (isinstance(obj["chosen"], str) and isinstance(obj["rejected"], str)):
            raise UserError(f"{where}: no 'prompt'; {_EXAMPLE}")
        prompt, chosen = hh_split(obj["chosen"])
        other, rejected = hh_split(obj["rejected"])
        if not prompt or not chosen.strip() or not rejected.strip():
            return None, "no_final_reply"
        if prompt != other:
            return None, "different_prompts"
    else:
        prompt = _prompt(where, obj["prompt"])
        chosen, rejected = _reply(where, "chosen", obj["chosen"]), _reply(where, "rejected", obj["rejected"])
    if chosen.strip() == rejected.strip():
        return None, "identical"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, ""


def data_files(path: str) -> list[Path]:
    """A file, or every file of a known type in a folder (a run's datasets/preferences, a Hugging Face dataset
    folder), in name order."""
    given = Path(path).expanduser()
    if given.is_dir():
        files = sorted(f for f in given.rglob("*") if f.is_file() and f.name.lower().endswith(_SUFFIXES))
        if not files:
            raise UserError(f"--data: {given} holds no {', '.join(_SUFFIXES)} files; give a file or a folder of them")
        return files
    if not given.is_file():
        raise UserError(f"--data: {given} does not exist; give an hh-rlhf .jsonl(.gz), a prompt/chosen/rejected "
                        "JSONL or Parquet file, or a folder of them")
    if not given.name.lower().endswith(_SUFFIXES):
        raise UserError(f"--data: {given}: unknown file type; use {', '.join(_SUFFIXES)}")
    return [given]


def read_labelled(path: str, limit: int | None) -> tuple[list[dict], Counter]:
    """The first `limit` usable rows of the file (or folder), and the count of skipped rows by reason."""
    pairs, skipped = [], Counter()
    for file in data_files(path):
        for lineno, obj in read_rows(file, "auto"):
            if limit is not None and len(pairs) >= limit:
                return pairs, skipped
            pair, why = labelled_pair(f"{file}:{lineno}", obj)
            if pair is None:
                skipped[why] += 1
            else:
                pairs.append(pair)
    if not pairs:
        raise UserError(f"{path}: no usable rows (skipped: {dict(skipped) or 'none'}); {_EXAMPLE}")
    return pairs, skipped


def shown_pairs(labelled: list[dict], seed: int) -> tuple[list[dict], list[bool]]:
    """Judge inputs with the human-chosen side shown as `a` in about half the rows, drawn by the row's content."""
    pairs, chosen_first = [], []
    for row in labelled:
        key = stable_id(json.dumps(row["prompt"], ensure_ascii=False), row["chosen"], row["rejected"])
        first = rng_for(seed, "judge-eval", key).random() < 0.5
        a, b = (row["chosen"], row["rejected"]) if first else (row["rejected"], row["chosen"])
        pairs.append({"prompt": row["prompt"], "a": a, "b": b})
        chosen_first.append(first)
    return pairs, chosen_first


# ---------------------------------------------------------------------------------------------------------
# Metrics


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _first_order_p(record: dict) -> float:
    """What a judge that asks only the a-first order would say: the weighted mean of p_a_first."""
    weights = [v["weight"] for v in record["verdicts"]]
    return sum(w * v["p_a_first"] for w, v in zip(weights, record["verdicts"])) / sum(weights)


def _right(p_a: float, chosen_is_a: bool) -> bool:
    """The judge sides with the human label; a tie (0.5) sides with nobody."""
    return p_a > 0.5 if chosen_is_a else p_a < 0.5


def first_position_picks(records: list[dict]) -> list[bool]:
    """Per single-order verdict that picks a side: True when it picked the response shown first."""
    picks = []
    for r in records:
        for v in r["verdicts"]:
            if v["p_a_first"] != 0.5:  # a shown first: picking a is picking the first position
                picks.append(v["p_a_first"] > 0.5)
            if v["p_a_second"] is not None and v["p_a_second"] != 0.5:  # b shown first
                picks.append(v["p_a_second"] < 0.5)
    return picks


def eval_metrics(records: list[dict], chosen_first: list[bool]) -> dict:
    """Accuracy against the human label (a tie counts as wrong), order consistency, position bias, margin."""
    ok = [(r, c) for r, c in zip(records, chosen_first) if not r["error"]]
    both = [r["consistent"] is not None for r, _ in ok]
    verdicts = [v for r, _ in ok for v in r["verdicts"] if v["p_a_second"] is not None]
    return {
        "n": len(ok),
        "failed": dict(Counter(Failure(r["error"]).reason for r in records if r["error"])),
        "accuracy": _mean([float(_right(r["p_a"], c)) for r, c in ok]),
        "accuracy_first_order_only": _mean([float(_right(_first_order_p(r), c)) for r, c in ok]),
        "consistency": _mean([float(r["consistent"]) for (r, _), b in zip(ok, both) if b]),
        "verdict_consistency": _mean([float((v["p_a_first"] - 0.5) * (v["p_a_second"] - 0.5) >= 0) for v in verdicts]),
        "first_position_rate": _mean([float(p) for p in first_position_picks([r for r, _ in ok])]),
        "mean_margin": _mean([abs(r["p_a"] - 0.5) for r, _ in ok]),
        "mean_p_chosen": _mean([r["p_a"] if c else 1.0 - r["p_a"] for r, c in ok]),
        "ties": sum(r["p_a"] == 0.5 for r, _ in ok),
    }


# ---------------------------------------------------------------------------------------------------------
# Judging and scoring


def evaluate(data: str, engine, principles: list, *, limit: int | None = None, **options) -> dict:
    """Read, judge and score a file: the report as a dict (without the run's settings)."""
    labelled, skipped = read_labelled(data, limit)
    return evaluate_labelled(labelled, skipped, engine, principles, **options)


def evaluate_labelled(labelled: list[dict], skipped: Counter, engine, principles: list, *, k: int = 2,
                      reasoning: bool = False, seed: int = 0, both_orders: bool = True, templates=None,
                      layout: str = "question_first") -> dict:
    from cai_pipeline.judging import judge_pairs

    pairs, chosen_first = shown_pairs(labelled, seed)
    start = time.perf_counter()
    records = judge_pairs(engine, pairs, principles, both_orders=both_orders, reasoning=reasoning, seed=seed, k=k,
                          templates=templates, layout=layout)
    seconds = time.perf_counter() - start
    report = eval_metrics(records, chosen_first)
    verdicts = sum(len(r["verdicts"]) for r in records if not r["error"])
    report.update({"skipped": dict(skipped), "chosen_shown_first": _mean([float(c) for c in chosen_first]),
                   "seconds": round(seconds, 2), "verdicts_per_s": round(verdicts / seconds, 3) if seconds else None,
                   "agreement": agreement(verdict_items(records, chosen_first), seed=seed)})
    return report


def verdict_items(records: list[dict], chosen_first: list[bool]) -> list[dict]:
    """Each principle's verdict (both orders averaged) against the person's choice of its pair; a pair's prompt
    is the unit the intervals resample."""
    items = []
    for r, first in zip(records, chosen_first):
        if r["error"]:
            continue
        unit = stable_id(json.dumps(r["prompt"], ensure_ascii=False))
        for v in r["verdicts"]:
            p = v["p_a_first"] if v["p_a_second"] is None else 0.5 * (v["p_a_first"] + v["p_a_second"])
            items.append({"unit": unit, "principle_id": v["principle_id"], "p": p, "human": "a" if first else "b"})
    return items


def evaluate_review(path: Path) -> dict:
    """A Review tab export: the person's labels against the run judge's verdicts recorded beside them."""
    from cai_pipeline.report.review import read_review

    labels = read_review(path)
    items = [{"unit": x.prompt_id, "principle_id": x.principle_id, "p": x.p_a, "human": x.human}
             for x in labels if x.human != "skip"]
    if not items:
        raise UserError(f"{path}: every label is 'skip'; choose A, B or tie for some verdicts in the Review tab")
    return {"data": str(path), "source": "review", "run": labels[0].run, "judge": labels[0].judge,
            "labels": len(labels), "skips": sum(x.human == "skip" for x in labels), "agreement": agreement(items)}


def format_table(report: dict) -> str:
    rows = [("pairs judged", report["n"]), ("accuracy vs human label", report["accuracy"]),
            ("accuracy, a-first order only", report["accuracy_first_order_only"]),
            ("order-consistency rate", report["consistency"]), ("first-position rate", report["first_position_rate"]),
            ("mean margin |p - 0.5|", report["mean_margin"]), ("mean p(human-chosen)", report["mean_p_chosen"]),
            ("ties", report["ties"]), ("failed", report["failed"] or 0), ("skipped rows", report["skipped"] or 0),
            ("seconds", report["seconds"]), ("verdicts/s", report["verdicts_per_s"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {'n/a' if value is None else value}" for name, value in rows]
    return "\n".join(lines) + "\n\nper verdict:\n" + agreement_table(report["agreement"])


def _kappa(row: dict) -> str:
    if row["kappa"] is None:
        return "n/a"
    ci = "" if row["kappa_ci_low"] is None else f" [{row['kappa_ci_low']:+.2f}, {row['kappa_ci_high']:+.2f}]"
    return f"{row['kappa']:+.3f}{ci}"


def agreement_table(report: dict) -> str:
    """Agreement, κ [interval] and ECE, overall and per principle, as aligned text."""
    if report["overall"] is None:
        return "no verdicts to compare"
    rows = [("", "n", "agreement", "Cohen's κ [CI]", "ECE")]
    for name, row in [("overall", report["overall"]), *report["principles"].items()]:
        rows.append((name, str(row["n"]), f"{row['agreement']:.3f}", _kappa(row), f"{row['ece']:.3f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def format_review(report: dict) -> str:
    return (f"{report['labels']} labels from the Review tab of {report['run']} ({report['skips']} skipped), against "
            f"the run's judge {report['judge']}:\n" + agreement_table(report["agreement"]))
