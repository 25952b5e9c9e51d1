"""A judge's bias profile: every probe on every pair, as paired differences with intervals over prompts.

For a pair (a, b) and a text probe with treatment T and control C (probes.py), the probe is applied to each
side in turn, so it is applied to either position equally:

    d_a = p(T(a) ≻ b) − p(C(a) ≻ b),    d_b = p(T(b) ≻ a) − p(C(b) ≻ a)

each p from the judge in both orders (judging.judge_pairs), under the same principles (k drawn per pair,
seeded by the pair) for every variant of the pair. A pair's difference is the weighted mean over its
principles and sides; the probe's shift is the mean over pairs, with a cluster-bootstrap interval that
resamples prompts (audit/stats.py: the prompts of one pair set move together). `position` needs no transform:
it is p_a_first − p_a_second of the unchanged pair, the change in a response's p when it moves from the second
slot to the first, read from single-order verdicts. Per principle, the same numbers from that principle's
verdicts alone.

Every variant of every pair is judged in one `judge_pairs` call per principle (the calls share nothing, so a
judge stage's batching is kept): the engine sees whole batches, never one pair at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cai_pipeline.audit.stats import cluster_weights, expanded_level, percentile_interval
from cai_pipeline.constitution import draw_principles
from cai_pipeline.judge_check.probes import PROBES, TEXT_PROBES
from cai_pipeline.judge_check.summary import (
    FLAG_THRESHOLD,
    CheckSettings,
    Cost,
    JudgeCheckSummary,
    ProbeScore,
)
from cai_pipeline.rng import derive_seed

SIDES = ("a", "b")


@dataclass
class CheckPair:
    """One pair to probe: the prompt's messages, its two responses, whether the prompt is benign (the refusal
    probe runs only there), and another model's response to the same prompt (the self probe), if any."""

    pair_id: str
    prompt_id: str
    prompt: list[dict]
    a: str
    b: str
    benign: bool = False
    other: str | None = None


class CountingEngine:
    """The judge engine, counting the conversations it scores (the check's cost in judge calls)."""

    def __init__(self, engine):
        self.engine, self.calls, self.failed = engine, 0, 0

    def choice_logprobs(self, convs, choices):
        out = self.engine.choice_logprobs(convs, choices)
        self.calls += len(convs)
        self.failed += sum(1 for x in out if isinstance(x, str) or not x)
        return out

    def generate(self, convs, params):
        return self.engine.generate(convs, params)


@dataclass
class Options:
    k: int = 2
    seed: int = 0
    templates: object = None
    layout: str = "question_first"
    reasoning: bool = False
    reasoning_max_tokens: int = 128
    bootstrap: int = 1000
    confidence: float = 0.95
    threshold: float = FLAG_THRESHOLD
    probes: Sequence[str] = PROBES
    skipped: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# What is compared


def variants(pair: CheckPair, probes: Sequence[str]) -> dict[tuple, tuple[str, str]]:
    """(probe, side, role) → (x, y): the texts compared, x being the one changed (or not, for a control).
    ("base",) is the pair as it is."""
    out: dict[tuple, tuple[str, str]] = {("base",): (pair.a, pair.b)}
    texts = {"a": (pair.a, pair.b), "b": (pair.b, pair.a)}
    for name in probes:
        probe = TEXT_PROBES.get(name)
        if (name == "refusal" and not pair.benign) or (name == "self" and pair.other is None):
            continue
        for side, (mine, theirs) in texts.items():
            if probe is not None:
                out[name, side, "treat"] = (probe.treat(mine), theirs)
                out[name, side, "control"] = (probe.control(mine), theirs)
            elif name == "self":
                out[name, side, "treat"] = (pair.other, theirs)
                out[name, side, "control"] = (mine, theirs)
    return out


def judge_all(engine, pairs: list[CheckPair], principles: list, opts: Options) -> tuple[list, dict]:
    """Each pair's drawn principles, and {(pair index, x, y, principle id): judge_pairs record}."""
    from cai_pipeline.judging import judge_pairs

    drawn = [draw_principles(principles, opts.seed, ("judge-check", p.pair_id), opts.k) for p in pairs]
    wanted: dict[str, dict[tuple, dict]] = {}
    for i, (pair, ps) in enumerate(zip(pairs, drawn)):
        for x, y in set(variants(pair, opts.probes).values()):
            for principle in ps:
                wanted.setdefault(principle.id, {})[i, x, y] = {"prompt": pair.prompt, "a": x, "b": y}
    by_id = {p.id: p for p in principles}
    results = {}
    for pid in sorted(wanted):
        keys = list(wanted[pid])
        records = judge_pairs(engine, [wanted[pid][key] for key in keys], [by_id[pid]], k=1, seed=opts.seed,
                              templates=opts.templates, layout=opts.layout, reasoning=opts.reasoning,
                              reasoning_max_tokens=opts.reasoning_max_tokens)
        results.update({(*key, pid): rec for key, rec in zip(keys, records)})
    return drawn, results


# ---------------------------------------------------------------------------------------------------------
# The differences


def _p(results: dict, i: int, texts: tuple[str, str], pid: str) -> float:
    rec = results[(i, *texts, pid)]
    return np.nan if rec["error"] else rec["p_a"]


def pair_diffs(pairs: list[CheckPair], drawn: list, results: dict, name: str) -> tuple[np.ndarray, dict]:
    """(N,) each pair's difference for probe `name` (NaN where it did not apply or the judge failed), and
    {principle id: (N,) the same from that principle's verdicts}."""
    overall = np.full(len(pairs), np.nan)
    per: dict[str, np.ndarray] = {}
    for i, (pair, ps) in enumerate(zip(pairs, drawn)):
        texts = variants(pair, [name])
        values, weights = [], []
        for principle in ps:
            d = [_position(results, i, texts, principle.id)] if name == "position" else [
                _p(results, i, texts[name, side, "treat"], principle.id)
                - _p(results, i, texts[name, side, "control"], principle.id)
                for side in SIDES if (name, side, "treat") in texts]
            d = [x for x in d if not np.isnan(x)]
            if d:
                per.setdefault(principle.id, np.full(len(pairs), np.nan))[i] = np.mean(d)
                values.append(np.mean(d))
                weights.append(principle.weight)
        if values:
            overall[i] = np.average(values, weights=weights)
    return overall, per


def _position(results: dict, i: int, texts: dict, pid: str) -> float:
    """P(A | a first) − P(B | a second): how much a's p moves when it is shown first rather than second."""
    rec = results[(i, *texts["base",], pid)]
    if rec["error"]:
        return np.nan
    v = rec["verdicts"][0]
    return v["p_a_first"] - v["p_a_second"]


def score(d: np.ndarray, units: np.ndarray, weights: np.ndarray, opts: Options, direction: str) -> ProbeScore:
    """The mean difference with its cluster-bootstrap interval over prompts, and whether it is flagged."""
    mask = ~np.isnan(d)
    if not mask.any():
        return ProbeScore(shift=None, ci_low=None, ci_high=None, n=0, flagged=False)
    v, w = d[mask], weights[:, mask]
    total = w.sum(-1)
    boot = (w * v).sum(-1)[total > 0] / total[total > 0]  # a replicate that drew none of these prompts: dropped
    lo, hi = percentile_interval(boot, expanded_level(opts.confidence, len(set(units[mask].tolist()))))
    shift = float(v.mean())
    if direction == "positive":
        flagged = lo > 0 and shift >= opts.threshold
    else:
        flagged = (lo > 0 or hi < 0) and abs(shift) >= opts.threshold
    return ProbeScore(shift=_r(shift), ci_low=_r(lo), ci_high=_r(hi), n=int(mask.sum()), flagged=bool(flagged))


def _r(x: float) -> float:
    return round(x, 4) + 0.0  # + 0.0: no "-0.0" in the files


# ---------------------------------------------------------------------------------------------------------
# The profile


def not_run(pairs: list[CheckPair], opts: Options) -> dict[str, str]:
    """The probes that have nothing to run on, and why (the caller may have said why already)."""
    skipped = dict(opts.skipped)
    if "refusal" in opts.probes and "refusal" not in skipped and not any(p.benign for p in pairs):
        skipped["refusal"] = ("no pair's prompt is tagged benign: a refusal is only the wrong answer to a benign "
                              "prompt (tag prompts `benign`, or --benign when every prompt of --data is)")
    if "self" in opts.probes and "self" not in skipped and not any(p.other is not None for p in pairs):
        skipped["self"] = "no other model's responses to these prompts (--other FILE)"
    return skipped


def run_check(engine, pairs: list[CheckPair], principles: list, *, judge: str, source: str,
              opts: Options) -> JudgeCheckSummary:
    """**Contract.** Probe the judge `engine` on `pairs` under `principles`: judge.check's summary.json."""
    if not pairs:
        raise ValueError("run_check needs at least one pair")
    skipped = not_run(pairs, opts)
    probes = [p for p in opts.probes if p not in skipped]
    opts = replace(opts, probes=probes)
    counting = CountingEngine(engine)
    start = time.perf_counter()
    drawn, results = judge_all(counting, pairs, principles, opts)
    seconds = time.perf_counter() - start
    units = np.array([p.prompt_id for p in pairs])
    weights = cluster_weights(units, opts.bootstrap, np.random.default_rng(derive_seed(opts.seed, "judge-check")))
    rows, by_principle = {}, {}
    for name in probes:
        direction = TEXT_PROBES[name].direction if name in TEXT_PROBES else "either"
        overall, per = pair_diffs(pairs, drawn, results, name)
        rows[name] = score(overall, units, weights, opts, direction)
        for pid in (p.id for p in principles if p.id in per):
            by_principle.setdefault(pid, {})[name] = score(per[pid], units, weights, opts, direction)
    settings = CheckSettings(source=source, pairs=len(pairs), prompts=len(set(units.tolist())),
                             principles_per_pair=min(opts.k, len(principles)), bootstrap=opts.bootstrap,
                             confidence=opts.confidence, threshold=opts.threshold, seed=opts.seed,
                             layout=opts.layout, reasoning=opts.reasoning)
    return JudgeCheckSummary(judge=judge, probes=rows, principles=by_principle, skipped=skipped, settings=settings,
                             cost=Cost(seconds=round(seconds, 2), judge_calls=counting.calls, failed=counting.failed))
