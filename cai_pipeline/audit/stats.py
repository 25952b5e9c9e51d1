"""The audit's statistics: pure functions over numpy arrays (no model, no files, no global RNG).

The data. A *pair* is one response of the audited model and one of the baseline to the same prompt (n pairs
per prompt); p is the judge's soft preference for the model's response, in [0, 1], from both orders. The
*prompt* is the unit that varies: the n pairs of one prompt share it, and its difficulty moves them together,
so the confidence intervals come from a cluster bootstrap that resamples prompts, each with all its pairs
(resampling pairs would treat them as independent and give intervals too narrow; see the tests).

Length control follows AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval", arXiv:2404.04475;
tatsu-lab/alpaca_eval `metrics/glm_winrate.py`): a logistic model of the preference on the length difference,

    logit P(model ≻ baseline) = θ + φ · tanh(Δ / sd(Δ)),    Δ = length(model) − length(baseline),

fitted to the soft preferences by maximum likelihood (cross-entropy with p as the target), and read at Δ = 0:
the length-controlled win rate is σ(θ), what the judge would say if both responses were equally long. Δ is
divided by its standard deviation but not centred, so zero still means "the same length". AlpacaEval's full
model also has an instruction-difficulty term fitted across many models; with one pair of models it cannot
be identified, so it is left out (their `length_controlled_minimal` formula, here in tokens rather than
characters). The fit is Newton's method on two parameters, batched over bootstrap replicates.

Style control follows LMSYS (Li, Angelopoulos, Chiang 2024, "Does style matter? Disentangling style and
substance in Chatbot Arena", lmsys.org/blog/2024-08-28-style-control): the same logistic model with markdown
covariates beside length — the counts of headers, bold spans and list items, each as the normalised difference
(c_model − c_baseline) / (c_model + c_baseline) (0 when both are 0), divided by its standard deviation but not
centred — read where every covariate is zero: the win rate at equal length *and* equal formatting.

Intervals are percentile intervals of the bootstrap replicates, *expanded* for few prompts (Hesterberg 2015,
"What Teachers Should Know About the Bootstrap", The American Statistician 69(4), the expanded percentile
interval): with U prompts, the plain percentile interval is too narrow by the factor sqrt((U − 1)/U) and by
using normal rather than t quantiles, so it is read at the level whose normal quantile is sqrt(U/(U − 1))·t_{U−1}.
On 30 clustered prompts that moves the coverage of a nominal 95% interval from 0.91 to 0.93 (tests).
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist

import numpy as np

# Newton steps, and a ridge on φ alone that keeps the fit finite when the length separates the preferences
# perfectly; it is 1e-6 of the total weight, far too small to move a fit that has a finite optimum. θ needs
# none: with preferences all 1 it grows by about one per step and σ(θ) rounds to 1, which is the answer.
NEWTON_STEPS = 40
RIDGE = 1e-6
MAX_STEP = 5.0


def sigmoid(x):
    """σ(x) = 1 / (1 + e^−x) without overflow."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=float)))


def length_feature(delta) -> np.ndarray:
    """tanh(Δ / sd(Δ)) (sample standard deviation, not centred). Equal differences carry no length signal: zeros."""
    delta = np.asarray(delta, dtype=float)
    sd = float(delta.std(ddof=1)) if delta.size > 1 else 0.0
    if not np.isfinite(sd) or sd == 0.0:
        return np.zeros_like(delta)
    return np.tanh(delta / sd)


def fit_logistic(x, y, w=None) -> tuple[np.ndarray, np.ndarray]:
    """(θ, φ) maximising Σ w·[y·log σ(θ + φx) + (1 − y)·log(1 − σ(θ + φx))] with soft targets y ∈ [0, 1].

    x: (N,) the feature; y: (..., N); w: (..., N) weights (a bootstrap replicate's counts), broadcast with y.
    Returns θ and φ of the batch shape (...). Where x is all zero, φ stays 0 and σ(θ) is the weighted mean of y.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    y, w = np.broadcast_arrays(y, w)
    total = w.sum(-1)
    mean = (w * y).sum(-1) / np.where(total > 0, total, 1.0)
    m = np.clip(mean, 1e-6, 1 - 1e-6)
    theta, phi = np.log(m / (1 - m)), np.zeros_like(mean)
    lam = RIDGE * np.maximum(total, 1.0)
    for _ in range(NEWTON_STEPS):
        s = sigmoid(theta[..., None] + phi[..., None] * x)
        r, h = w * (y - s), w * s * (1 - s)
        g0, g1 = r.sum(-1), (r * x).sum(-1) - lam * phi
        h00, h01, h11 = h.sum(-1), (h * x).sum(-1), (h * x * x).sum(-1) + lam
        det = h00 * h11 - h01 * h01
        det = np.where(det > 0, det, np.inf)  # saturated (σ rounds to 0 or 1 everywhere): stop moving
        d0 = np.clip((h11 * g0 - h01 * g1) / det, -MAX_STEP, MAX_STEP)
        d1 = np.clip((h00 * g1 - h01 * g0) / det, -MAX_STEP, MAX_STEP)
        theta, phi = theta + d0, phi + d1
        if max(np.abs(d0).max(initial=0.0), np.abs(d1).max(initial=0.0)) < 1e-10:
            break
    return theta, phi


def lc_win_rate(p, x, w=None):
    """The length-controlled win rate: σ(θ) of the fit of p on the length feature x (see the module docstring)."""
    theta, _ = fit_logistic(x, p, w)
    return sigmoid(theta)


_HEADER = re.compile(r"^ {0,3}#{1,6}\s+\S", re.M)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.S)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S", re.M)


def markdown_counts(text: str) -> tuple[int, int, int]:
    """(headers, bold spans, list items) of a text, LMSYS's three markdown style features."""
    return len(_HEADER.findall(text)), len(_BOLD.findall(text)), len(_LIST_ITEM.findall(text))


def _scaled(x: np.ndarray) -> np.ndarray:
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return np.zeros_like(x) if not np.isfinite(sd) or sd == 0.0 else x / sd


def style_features(delta, counts_model, counts_baseline) -> np.ndarray:
    """(N, 4): the length feature (as length control's) and, per markdown count, the normalised difference
    (a − b) / (a + b) scaled by its standard deviation. All zero where the two responses are alike."""
    a, b = np.asarray(counts_model, dtype=float).reshape(-1, 3), np.asarray(counts_baseline, dtype=float).reshape(-1, 3)
    total = a + b
    ratio = np.divide(a - b, total, out=np.zeros_like(total), where=total > 0)
    return np.column_stack([length_feature(delta), *(_scaled(ratio[:, j]) for j in range(3))])


def fit_logistic_features(features, y, w=None) -> np.ndarray:
    """β = (θ, φ_1..φ_D) maximising Σ w·[y·log σ(θ + φ·x) + (1 − y)·log(1 − σ(θ + φ·x))], soft targets y.

    features: (N, D); y: (..., N); w: (..., N), broadcast with y. Returns (..., D + 1). The same Newton method and
    ridge on φ as `fit_logistic`, with D covariates; a covariate that is all zero keeps φ = 0."""
    z = np.column_stack([np.ones(len(features)), np.asarray(features, dtype=float).reshape(len(features), -1)])
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    y, w = np.broadcast_arrays(y, w)
    total = w.sum(-1)
    m = np.clip((w * y).sum(-1) / np.where(total > 0, total, 1.0), 1e-6, 1 - 1e-6)
    beta = np.zeros((*m.shape, z.shape[1]))
    beta[..., 0] = np.log(m / (1 - m))
    ridge = np.ones(z.shape[1])
    ridge[0] = 0.0
    lam = RIDGE * np.maximum(total, 1.0)[..., None] * ridge
    for _ in range(NEWTON_STEPS):
        s = sigmoid(beta @ z.T)
        grad = (w * (y - s)) @ z - lam * beta
        weighted = (w * s * (1 - s))[..., None] * z  # (..., N, D + 1)
        hess = np.swapaxes(weighted, -1, -2) @ z + lam[..., None] * np.eye(z.shape[1])
        step = np.clip(_solve(hess, grad), -MAX_STEP, MAX_STEP)
        beta = beta + step
        if np.abs(step).max(initial=0.0) < 1e-10:
            break
    return beta


def _solve(hess: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Newton steps H⁻¹g, batched; a saturated fit (σ rounds to 0 or 1 everywhere: H singular) stops moving."""
    try:
        return np.linalg.solve(hess, grad[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return (np.linalg.pinv(hess) @ grad[..., None])[..., 0]


def sc_win_rate(p, features, w=None):
    """The style-controlled win rate: σ(θ) of the fit of p on the length and markdown features."""
    return sigmoid(fit_logistic_features(features, p, w)[..., 0])


def share_won(p) -> float:
    """The share of pairs the model won; a tie (p exactly ½) counts half."""
    p = np.asarray(p, dtype=float)
    return float(np.mean((p > 0.5) + 0.5 * (p == 0.5)))


def cluster_weights(units, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, N) weights for N pairs: in each replicate, how often the prompt of each pair was drawn when the
    U distinct prompts are resampled U times with replacement. A weighted mean under these weights is the mean
    over the resampled prompts, each with all of its pairs."""
    _, index = np.unique(np.asarray(units), return_inverse=True)
    n_units = int(index.max()) + 1 if index.size else 0
    if n_units == 0:
        return np.zeros((n_boot, 0))
    counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot)
    return counts[:, index].astype(float)


def t_quantile(z: float, nu: float) -> float:
    """Student's t quantile with nu degrees of freedom at the normal quantile z (the Cornish-Fisher expansion,
    Abramowitz & Stegun 26.7.5): within 1e-3 of the exact value for nu ≥ 5 at the usual levels."""
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / nu + g2 / nu**2 + g3 / nu**3 + g4 / nu**4


def expanded_level(confidence: float, n_units: int) -> float:
    """The level at which to read a percentile interval over n_units resampled units so that it has about
    `confidence` coverage (Hesterberg's expanded percentile interval; see the module docstring)."""
    if n_units < 2:
        return confidence
    normal = NormalDist()
    z = normal.inv_cdf(0.5 + confidence / 2)
    wide = math.sqrt(n_units / (n_units - 1)) * t_quantile(z, n_units - 1)
    return min(1.0 - 1e-9, 2.0 * normal.cdf(wide) - 1.0)


def percentile_interval(samples, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap replicates (percentile method)."""
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.asarray(samples, dtype=float), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def score(p, consistent, x, weights: np.ndarray, confidence: float, n_units: int, style=None) -> dict:
    """One row of the audit: win rate (mean soft preference) with its bootstrap interval, the share of pairs won,
    the length-controlled win rate with its interval, the style-controlled one (where `style` features are
    given) with its interval, the order-consistency rate of the verdicts, and n pairs.

    p, x: (N,) per pair; style: (N, D) `style_features` or None; consistent: the verdicts' order-consistency
    flags (any length); weights: (B, N) from `cluster_weights`, the same for every row so that rows of one
    audit are resampled alike; n_units: the number of prompts resampled (it sets the interval's expansion)."""
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return {"win_rate": None, "ci_low": None, "ci_high": None, "lc_win_rate": None, "lc_ci_low": None,
                "lc_ci_high": None, "sc_win_rate": None, "sc_ci_low": None, "sc_ci_high": None, "share_won": None,
                "consistency": None, "n": 0}
    level = expanded_level(confidence, n_units)
    boot = (weights * p).sum(-1) / weights.sum(-1)
    lo, hi = percentile_interval(boot, level)
    lc_lo, lc_hi = percentile_interval(lc_win_rate(p, x, weights), level)
    sc = {"sc_win_rate": None, "sc_ci_low": None, "sc_ci_high": None}
    if style is not None:
        sc_lo, sc_hi = percentile_interval(sc_win_rate(p, style, weights), level)
        sc = {"sc_win_rate": _round(sc_win_rate(p, style)), "sc_ci_low": _round(sc_lo), "sc_ci_high": _round(sc_hi)}
    flags = np.asarray(consistent, dtype=float)
    return {"win_rate": _round(p.mean()), "ci_low": _round(lo), "ci_high": _round(hi),
            "lc_win_rate": _round(lc_win_rate(p, x)), "lc_ci_low": _round(lc_lo), "lc_ci_high": _round(lc_hi), **sc,
            "share_won": _round(share_won(p)), "consistency": _round(flags.mean()) if flags.size else None,
            "n": int(p.size)}


def rate(flags) -> float | None:
    """The share of True among flags; None when there are none."""
    flags = np.asarray(flags, dtype=float)
    return _round(flags.mean()) if flags.size else None


def audit_scores(prefs: np.ndarray, consistent: np.ndarray, principle_weights, units, delta, axes: dict,
                 *, n_boot: int, confidence: float, seed: int, style=None) -> dict:
    """Every row of an audit at once, all resampled with the same bootstrap draws.

    prefs, consistent: (K, N) per principle and pair; principle_weights: (K,); units: (N,) the prompt of each
    pair; delta: (N,) length(model) − length(baseline); style: (N, D) `style_features`, or None for no
    style-controlled rates; axes: name → indices of its principles. Returns
    {"principles": [row per principle], "overall": row, "axes": {name: row}}. Overall and axis preferences are
    the weight-averaged preferences over their principles (as the judge's ensemble p)."""
    if len(principle_weights) == 0:  # every audited principle is check-only: nothing for the judge to score
        return {"principles": [], "overall": score([], [], [], None, confidence, 0), "axes": {}}
    prefs = np.asarray(prefs, dtype=float).reshape(len(principle_weights), -1)
    consistent = np.asarray(consistent, dtype=bool).reshape(prefs.shape)
    wk = np.asarray(principle_weights, dtype=float)
    x = length_feature(delta)
    weights = cluster_weights(units, n_boot, np.random.default_rng(seed))
    n_units = len(set(np.asarray(units).tolist()))

    def pooled(idx) -> dict:
        idx = list(idx)
        p = (wk[idx, None] * prefs[idx]).sum(0) / wk[idx].sum()
        return score(p, consistent[idx].ravel(), x, weights, confidence, n_units, style)

    return {"principles": [score(prefs[k], consistent[k], x, weights, confidence, n_units, style)
                           for k in range(len(wk))],
            "overall": pooled(range(len(wk))),
            "axes": {name: pooled(idx) for name, idx in axes.items() if len(idx)}}


def length_fit(p, delta) -> dict:
    """θ, φ and sd(Δ) of the overall fit, for the preference-vs-length plot's curve."""
    delta = np.asarray(delta, dtype=float)
    theta, phi = fit_logistic(length_feature(delta), np.asarray(p, dtype=float))
    sd = float(delta.std(ddof=1)) if delta.size > 1 else 0.0
    return {"theta": float(theta), "phi": float(phi), "sd": sd}


# ---------------------------------------------------------------------------------------------------------
# Pointwise compliance: rates of 0/1 flags, clustered by prompt


def rate_replicates(flags, units, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) bootstrap replicates of the share of True flags, prompts resampled with all their responses."""
    flags = np.asarray(flags, dtype=float)
    weights = cluster_weights(units, n_boot, rng)
    return (weights * flags).sum(-1) / np.maximum(weights.sum(-1), 1e-12)


def wilson_interval(rate: float, n: int, confidence: float) -> tuple[float, float]:
    """The Wilson score interval of a proportion `rate` observed on n units (Wilson 1927, JASA 22(158))."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_interval(flags, units, *, n_boot: int, confidence: float, seed: int) -> dict:
    """{violation_rate, ci_low, ci_high, n}: the share of True flags with its expanded percentile interval over
    the prompts in `units` (one per flag), never narrower than the Wilson interval on the number of prompts: a
    bootstrap of flags that are all False is [0, 0], but 0 violations in 6 prompts is not a rate known to be 0.
    None values where there are no flags."""
    flags = np.asarray(flags, dtype=float)
    if flags.size == 0:
        return {"violation_rate": None, "ci_low": None, "ci_high": None, "n": 0}
    n_units = len(set(np.asarray(units).tolist()))
    boot = rate_replicates(flags, units, n_boot, np.random.default_rng(seed))
    lo, hi = percentile_interval(boot, expanded_level(confidence, n_units))
    w_lo, w_hi = wilson_interval(float(flags.mean()), n_units, confidence)
    return {"violation_rate": _round(flags.mean()), "ci_low": _round(min(lo, w_lo)), "ci_high": _round(max(hi, w_hi)),
            "n": int(flags.size)}


def rate_difference(new, new_units, old, old_units, *, n_boot: int, confidence: float, seed: int) -> dict | None:
    """{difference, ci_low, ci_high, rose}: rate(new) − rate(old) with an interval from resampling each side's
    prompts independently (two logs are two samples: no prompt need be shared); `rose` when the whole
    interval is above zero. None when a side has no flags."""
    new, old = np.asarray(new, dtype=float), np.asarray(old, dtype=float)
    if new.size == 0 or old.size == 0:
        return None
    rng = np.random.default_rng(seed)
    boot = rate_replicates(new, new_units, n_boot, rng) - rate_replicates(old, old_units, n_boot, rng)
    n_units = min(len(set(np.asarray(new_units).tolist())), len(set(np.asarray(old_units).tolist())))
    lo, hi = percentile_interval(boot, expanded_level(confidence, n_units))
    return {"difference": _round(new.mean() - old.mean()), "ci_low": _round(lo), "ci_high": _round(hi),
            "rose": bool(lo > 0)}


def check_score(model_pass, baseline_pass, units, *, n_boot: int, confidence: float, seed: int) -> dict:
    """A checkable principle's row: each side's pass rate with its bootstrap interval over prompts, the
    difference (model − baseline) with its interval from the same (paired) resamples, and the pairwise win rate
    from the check (1 where only the model passes, 0 where only the baseline does, ½ otherwise) with its
    interval. Exact per response: the only noise is which prompts were drawn.

    model_pass, baseline_pass: (N,) booleans per pair (the model's i-th response, the baseline's i-th);
    units: (N,) the prompt of each pair."""
    m = np.asarray(model_pass, dtype=float)
    b = np.asarray(baseline_pass, dtype=float)
    if m.size == 0:
        return {k: None for k in CHECK_KEYS} | {"n": 0}
    weights = cluster_weights(units, n_boot, np.random.default_rng(seed))
    level = expanded_level(confidence, len(set(np.asarray(units).tolist())))
    win = 0.5 + 0.5 * (m - b)  # 1, 0 or ½ per pair

    def row(values: np.ndarray, name: str) -> dict:
        lo, hi = percentile_interval((weights * values).sum(-1) / weights.sum(-1), level)
        return {name: _round(values.mean()), f"{name}_ci_low": _round(lo), f"{name}_ci_high": _round(hi)}

    return {**row(m, "pass_rate_model"), **row(b, "pass_rate_baseline"), **row(m - b, "difference"),
            **row(win, "win_rate"), "n": int(m.size)}


CHECK_KEYS = tuple(f"{name}{suffix}" for name in ("pass_rate_model", "pass_rate_baseline", "difference", "win_rate")
                   for suffix in ("", "_ci_low", "_ci_high"))
