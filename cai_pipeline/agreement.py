"""How far the judge agrees with people: raw agreement, Cohen's κ with a cluster-bootstrap interval, expected
calibration error and a reliability table, overall and per principle (`cai judge-eval`).

An *item* is one verdict a person also gave: the judge's p(a ≻ b) under one principle (both orders averaged)
and the person's choice, a, b or tie. The judge's choice is a when p > ½, b when p < ½, tie at exactly ½.

Cohen's κ (Cohen 1960, "A coefficient of agreement for nominal scales") corrects agreement for chance:
κ = (p_o − p_e) / (1 − p_e), where p_o is the share of items on which the two choose alike and p_e the share
they would share by chance, Σ_c p_human(c)·p_judge(c). 1 is perfect agreement, 0 is what chance gives, below 0
is systematic disagreement. Its interval resamples *prompts* (audit/stats.py's cluster bootstrap): a pair's
several principles, and a prompt's several pairs, are not independent items.

Calibration reads the judge's p as a probability that a person prefers a: the items are put in 10 bins of p,
and the expected calibration error (Naeini et al. 2015; Guo et al. 2017, arXiv 1706.04599) is the
item-weighted mean of |mean p − share of people choosing a| over the bins (a tie counts half). The reliability
table is those bins; a calibrated judge's points lie on the diagonal.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from cai_pipeline.audit.stats import cluster_weights, expanded_level, percentile_interval

CHOICES = ("a", "b", "tie")
BINS = 10


def judge_choice(p: float) -> str:
    return "a" if p > 0.5 else "b" if p < 0.5 else "tie"


def kappa(human, judge, weights) -> np.ndarray:
    """Cohen's κ of two choice codes (N,) under item weights (..., N); NaN where chance agreement is 1 (both
    chose one and the same category throughout: κ says nothing then)."""
    human, judge = np.asarray(human), np.asarray(judge)
    w = np.asarray(weights, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # a replicate that drew none of these items: NaN
        total = w.sum(-1)
        observed = (w * (human == judge)).sum(-1) / total
        chance = sum(((w * (human == c)).sum(-1) / total) * ((w * (judge == c)).sum(-1) / total) for c in range(3))
        return np.where(chance < 1.0, (observed - chance) / (1.0 - chance), np.nan)


def reliability(p, outcome) -> tuple[list[dict], float]:
    """The reliability table (per non-empty bin of p: its range, items, mean p, mean outcome) and the ECE."""
    p, outcome = np.asarray(p, dtype=float), np.asarray(outcome, dtype=float)
    index = np.minimum((p * BINS).astype(int), BINS - 1)
    table, ece = [], 0.0
    for b in range(BINS):
        mask = index == b
        if mask.any():
            mean_p, mean_y = float(p[mask].mean()), float(outcome[mask].mean())
            table.append({"bin": [b / BINS, (b + 1) / BINS], "n": int(mask.sum()), "mean_p": round(mean_p, 4),
                          "human_a": round(mean_y, 4)})
            ece += mask.sum() / p.size * abs(mean_p - mean_y)
    return table, round(float(ece), 4)


def _round(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4) + 0.0


def group(items: list[dict], weights: np.ndarray, units: np.ndarray, confidence: float) -> dict:
    """One row: n, agreement, κ [interval], ECE, the reliability table, and each side's choices."""
    code = {c: i for i, c in enumerate(CHOICES)}
    human = np.array([code[i["human"]] for i in items])
    judge = np.array([code[judge_choice(i["p"])] for i in items])
    boot = kappa(human, judge, weights)
    boot = boot[np.isfinite(boot)]
    lo, hi = percentile_interval(boot, expanded_level(confidence, len(set(units.tolist())))) if boot.size else (None, None)
    table, ece = reliability([i["p"] for i in items], [{"a": 1.0, "b": 0.0, "tie": 0.5}[i["human"]] for i in items])
    return {"n": len(items), "agreement": _round(float((human == judge).mean())),
            "kappa": _round(float(kappa(human, judge, np.ones(len(items))))), "kappa_ci_low": _round(lo),
            "kappa_ci_high": _round(hi), "ece": ece, "reliability": table,
            "human": dict(Counter(i["human"] for i in items)),
            "judge": dict(Counter(judge_choice(i["p"]) for i in items))}


def agreement(items: list[dict], *, bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """{"overall": row, "principles": {id: row}} over items {unit, principle_id, p, human}; every row is resampled
    with the same draws of the units (prompts)."""
    if not items:
        return {"overall": None, "principles": {}}
    units = np.array([str(i["unit"]) for i in items])
    weights = cluster_weights(units, bootstrap, np.random.default_rng(seed))
    out = {"overall": group(items, weights, units, confidence), "principles": {}}
    for pid in dict.fromkeys(i["principle_id"] for i in items):
        idx = [k for k, i in enumerate(items) if i["principle_id"] == pid]
        out["principles"][pid] = group([items[k] for k in idx], weights[:, idx], units[idx], confidence)
    return out


def reliability_plot(report: dict, path) -> None:
    """The judge's p against the share of people choosing a, per bin (point size: items), overall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cai_pipeline.store import atomic_write

    rows = report["overall"]["reliability"]
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
    ax.plot([r["mean_p"] for r in rows], [r["human_a"] for r in rows], "-o", color="tab:blue",
            label=f"judge (ECE {report['overall']['ece']:.3f})")
    for r in rows:
        ax.annotate(str(r["n"]), (r["mean_p"], r["human_a"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="judge's p(a ≻ b), binned", ylabel="share of people choosing a")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
