"""Judging (RLAIF): which of two responses is better under a principle, asked in both orders, as a soft label.
The judge stage, the audit and `cai judge-eval` all judge through `judge_pairs`.

For a pair (x, y) and a principle, the judge template shows x as (A) and y as (B), the assistant turn starts
with the judge prefix ("The answer is: ("), and the engine gives log P("A") and log P("B"): one prefill, no
decoding. Then again with the two swapped. p(x≻y) = ½·(P(A | x first) + P(B | x second)), each normalised over
{A, B}, so a judge that always answers "A" lands on 0.5 instead of on a side. k principles are drawn per pair
(seeded by the pair's content) and averaged, weighted by principle weight.

Exact symmetry. Engine numerics depend on the batch a conversation lands in (padding, prefix caching: up to
0.1–0.2 nats in bf16 on the embedded model), so scoring (x, y) and (y, x) as two separate pairs would give
p + p' ≈ 1, not = 1. Instead each pair is scored once, in a canonical order (its two texts sorted by hash), and
the other orientation is derived as 1 − p. The batch sent to the engine is the canonical pairs sorted by key,
so it depends only on the *set* of pairs: the same pairs judged in any order or orientation give bit-identical
numbers, and a pair judged twice in one call is scored once.

Chain-of-thought mode writes a short reasoning per order first (greedy), then scores A/B after the reasoning
and the judge prefix, and clamps each probability to [0.4, 0.6]: the CAI paper found CoT verdicts over-confident.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cai_pipeline.constitution import draw_principles
from cai_pipeline.engines.base import Failure, GenParams, Message
from cai_pipeline.rng import derive_seed, stable_id
from cai_pipeline.rowkeys import content_key, verdict_key
from cai_pipeline.templates import TemplateSet, transcript

CHOICES = ["A", "B"]
COT_CLAMP = (0.4, 0.6)
# The judge's user-turn template per (layout, reasoning). "question_first" asks the principle's question before
# the responses; "shared_prefix" puts the conversation and both responses first and the question last, so the
# k principles of one pair and order share one prefix (vLLM's prefix cache computes it once).
TEMPLATES = {("question_first", False): "judge", ("question_first", True): "judge_reasoning",
             ("shared_prefix", False): "judge_shared", ("shared_prefix", True): "judge_shared_reasoning"}
REASONING_START = "Let's think step by step:"
# Cut the reasoning where the model starts to announce its answer; we append the judge prefix ourselves.
REASONING_STOPS = ("The answer is", "the answer is")


# ---------------------------------------------------------------------------------------------------------
# The ensemble math: pure functions over numbers


def choice_probability(logps: Mapping[str, float]) -> float:
    """P(A) normalised over {A, B}: e^la / (e^la + e^lb) = σ(la − lb), computed without overflow.
    Equal log-probs (both −inf included) give exactly 0.5."""
    d = logps["A"] - logps["B"]
    if math.isnan(d) or d == 0:
        return 0.5
    if d > 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


def order_average(p_first: float, p_second: float) -> float:
    """p(x≻y) = ½·(P(A | x first) + P(B | x second)): position bias adds to one term and subtracts from the other."""
    return 0.5 * (p_first + p_second)


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    return sum(w * v for v, w in zip(values, weights)) / sum(weights)


def clamp(p: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, p))


def picks_same_position(p_first: float, p_second: float) -> bool:
    """Order-inconsistent: with x first the judge picks (A) (p_first > ½) and with x second it picks (A) again
    (P(B | x second) < ½), or (B) both times. A probability of exactly ½ picks no position."""
    return (p_first - 0.5) * (p_second - 0.5) < 0


# ---------------------------------------------------------------------------------------------------------
# Planning: canonical pairs, principle draws, the conversations to score


@dataclass(frozen=True)
class Job:
    """One canonical pair to score: x and y in hash order (or as given in single-order mode)."""

    key: str
    messages: list[Message]
    x: str
    y: str
    principles: list  # constitution Principles drawn for this pair
    both_orders: bool = True

    def orders(self) -> list[tuple[str, str]]:
        return [(self.x, self.y), (self.y, self.x)] if self.both_orders else [(self.x, self.y)]


def as_messages(prompt: str | Sequence[Mapping[str, str]]) -> list[Message]:
    """A prompt string is one user turn; a list of chat messages is kept (role and content only)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical(a: str, b: str) -> tuple[str, str, bool]:
    """(x, y, swapped): the two texts in an order that does not depend on which came first. Sorted by hash,
    so neither length nor alphabet decides which response is shown first."""
    return (b, a, True) if _text_hash(b) < _text_hash(a) else (a, b, False)


def pair_key(messages: list[Message], x: str, y: str) -> str:
    """Content key of a canonical pair: seeds its principle draw, so (x, y) and (y, x) get the same principles."""
    return stable_id(json.dumps(messages, ensure_ascii=False, sort_keys=True), _text_hash(x), _text_hash(y))


def plan(pairs: Sequence[Mapping], principles: Sequence, k: int, seed: int,
         both_orders: bool) -> tuple[list[Job], list[tuple[str, bool]]]:
    """The unique jobs sorted by key (the engine batch depends only on the set of pairs) and, per input pair,
    (job key, swapped)."""
    jobs: dict[str, Job] = {}
    refs = []
    for pair in pairs:
        messages = as_messages(pair["prompt"])
        x, y, swapped = canonical(pair["a"], pair["b"])
        key = pair_key(messages, x, y)
        drawn = draw_principles(principles, seed, ("judge", key), k)
        if not both_orders:  # asked as given: (a, b) and (b, a) are different questions
            x, y, swapped, key = pair["a"], pair["b"], False, stable_id(key, _text_hash(pair["a"]))
        jobs.setdefault(key, Job(key, messages, x, y, drawn, both_orders))
        refs.append((key, swapped))
    return [jobs[key] for key in sorted(jobs)], refs


def conversations(job: Job, templates: TemplateSet, reasoning: bool,
                  layout: str = "question_first") -> list[list[Message]]:
    """Per principle, per order: the judge's user turn and the assistant's opening (prefix or reasoning cue)."""
    convo = transcript(job.messages)
    name, start = TEMPLATES[layout, reasoning], REASONING_START if reasoning else templates.judge_prefix()
    out = []
    for principle in job.principles:
        for first, second in job.orders():
            text = templates.render(name, conversation=convo, question=principle.comparison,
                                    response_a=first, response_b=second)
            out.append([{"role": "user", "content": text}, {"role": "assistant", "content": start}])
    return out


# ---------------------------------------------------------------------------------------------------------
# Scoring: one generate call (CoT only) and one choice_logprobs call for the whole batch


def add_reasoning(engine, convs: list[list[Message]], prefix: str, max_tokens: int,
                  seed: int) -> tuple[list, list[str]]:
    """The judge writes its reasoning first (greedy, so it is a function of the input); the conversation to
    score is that reasoning followed by the judge prefix. A failed generation stays as 'reason: detail'."""
    params = GenParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=REASONING_STOPS, seed=seed)
    scored, reasons = [], []
    for conv, comps in zip(convs, engine.generate(convs, params)):
        comp = comps[0]
        if comp.finish_reason == "error":
            scored.append(Failure(comp.error or "engine_error: no detail"))
            reasons.append("")
            continue
        opening = f"{REASONING_START}{comp.text.rstrip()}\n{prefix}"
        scored.append([conv[0], {"role": "assistant", "content": opening}])
        reasons.append(comp.text.strip())
    return scored, reasons


def score_all(engine, convs: list) -> list[dict | str]:
    """Log-probs of A/B for every conversation in one engine call; failures (strings) pass through."""
    live = [i for i, c in enumerate(convs) if not isinstance(c, str)]
    logps = engine.choice_logprobs([convs[i] for i in live], CHOICES) if live else []
    out: list[dict | str] = list(convs)
    for i, lp in zip(live, logps):
        # `{}` means too long for the context; a failure the engine named ("server_error: ...") passes through.
        out[i] = lp or Failure.of("too_long", "the judge prompt does not fit the judge model's context")
    return out


def _verdict(principle, first: float, second: float | None, reasons: Sequence[str]) -> dict:
    return {"principle_id": principle.id, "weight": float(principle.weight), "p_a_first": first,
            "p_a_second": second, "reasoning_first": reasons[0] if reasons else None,
            "reasoning_second": reasons[1] if len(reasons) > 1 else None, "source": "judge",
            "check_a": None, "check_b": None}


def check_decisions(job: Job, confidence: float | None) -> list[tuple[dict | None, tuple | None]]:
    """Per drawn principle: (the verdict from its check, or None for the LLM to give; the check's results on
    x and y, or None). A check decides a pair it separates (one passes, one fails) with `confidence`, the same
    in both orders; a check-only principle that does not separate the pair is a tie (0.5)."""
    out = []
    for p in job.principles:
        if confidence is None or p.check is None:
            out.append((None, None))
            continue
        rx, ry = p.run_check(job.messages, job.x), p.run_check(job.messages, job.y)
        results = (rx.passed, ry.passed)
        if rx.passed == ry.passed and p.comparison is not None:
            out.append((None, results))
            continue
        q = 0.5 if rx.passed == ry.passed else (confidence if rx.passed else 1.0 - confidence)
        verdict = {**_verdict(p, q, q if job.both_orders else None, []), "source": "check",
                   "check_a": rx.passed, "check_b": ry.passed}
        out.append((verdict, results))
    return out


def aggregate(verdicts: list[dict], both_orders: bool) -> dict:
    """p_a (weighted over principles, each the mean of its two orders) and order-consistency."""
    weights = [v["weight"] for v in verdicts]
    if not both_orders:
        return {"verdicts": verdicts, "p_a": weighted_mean([v["p_a_first"] for v in verdicts], weights),
                "consistent": None}
    per = [order_average(v["p_a_first"], v["p_a_second"]) for v in verdicts]
    return {"verdicts": verdicts, "p_a": weighted_mean(per, weights),
            "consistent": not any(picks_same_position(v["p_a_first"], v["p_a_second"]) for v in verdicts)}


def merge(job: Job, decisions: list[tuple], llm: dict | str | None) -> dict | str:
    """The job's verdicts in principle order: the checks' and the LLM's (which come in the same order)."""
    if isinstance(llm, str):
        return llm
    asked = iter(llm["verdicts"] if llm else [])
    verdicts = []
    for verdict, results in decisions:
        if verdict is None:
            verdict = next(asked)
            if results is not None:
                verdict = {**verdict, "check_a": results[0], "check_b": results[1]}
        verdicts.append(verdict)
    return aggregate(verdicts, job.both_orders)


def job_outcome(job: Job, scores: Sequence[dict | str | None], reasons: Sequence[str],
                clamp_to: tuple[float, float] | None, known: Mapping[int, Mapping] | None = None) -> dict | str:
    """One job's verdicts in its own orientation (a = x), or its first failure as 'reason: detail'. `known`:
    principle index → a verdict taken from an earlier run (its scores are None here)."""
    failed = next((s for s in scores if isinstance(s, str)), None)
    if failed:
        return failed
    known = known or {}
    n = len(job.orders())
    verdicts = []
    for i, principle in enumerate(job.principles):
        if i in known:
            old = known[i]
            verdicts.append(_verdict(principle, old["p_a_first"], old["p_a_second"],
                                     [old["reasoning_first"], old["reasoning_second"]][:n]))
            continue
        # P(A | x first); and P(B | x second) = 1 − P(A | y first).
        probs = [choice_probability(scores[i * n])] + [1.0 - choice_probability(s) for s in scores[i * n + 1 : i * n + n]]
        if clamp_to:
            probs = [clamp(p, *clamp_to) for p in probs]
        verdicts.append(_verdict(principle, probs[0], probs[1] if n > 1 else None, reasons[i * n : i * n + n]))
    return aggregate(verdicts, n > 1)


@dataclass
class VerdictReuse:
    """Verdicts of an earlier run (`cai run --reuse`), by key (rowkeys.verdict_key: the rendered judge
    conversations of both orders, the judge model and settings), in their pair's canonical orientation.
    judge_pairs skips the conversations of a known verdict and fills `keys`: per input pair, in order,
    {principle_id: key} of the verdicts it holds."""

    salt: str
    known: Mapping[str, Mapping] = field(default_factory=dict)
    keys: list[dict[str, str]] = field(default_factory=list)
    reused: int = 0
    computed: int = 0

    def plan(self, jobs: Sequence[Job], convs: Sequence[list]) -> tuple[list[list[str]], dict[tuple[int, int], Mapping]]:
        """Per job, each principle's key; and the known verdicts by (job index, principle index)."""
        keys, known = [], {}
        for j, job in enumerate(jobs):
            n = len(job.orders())
            keys.append([verdict_key(self.salt, convs[j][i * n : i * n + n]) for i in range(len(job.principles))])
            for i, key in enumerate(keys[-1]):
                if key in self.known:
                    known[j, i] = self.known[key]
            self.reused += sum(1 for i in range(len(job.principles)) if (j, i) in known)
            self.computed += sum(1 for i in range(len(job.principles)) if (j, i) not in known)
        return keys, known


def swap(outcome: dict) -> dict:
    """The same verdicts seen from the other side: every probability becomes 1 − p of its mirror order.
    1 − p is exact in floating point for p ≥ ½ and p + (1 − p) rounds to exactly 1 for every p in [0, 1]."""
    verdicts = [{**v, "p_a_first": 1.0 - v["p_a_second"], "p_a_second": 1.0 - v["p_a_first"],
                 "reasoning_first": v["reasoning_second"], "reasoning_second": v["reasoning_first"],
                 "check_a": v.get("check_b"), "check_b": v.get("check_a")}
                for v in outcome["verdicts"]]
    return {"verdicts": verdicts, "p_a": 1.0 - outcome["p_a"], "consistent": outcome["consistent"]}


def check_key(salt: str, principle, job: Job, confidence: float | None) -> str:
    """The key of a verdict a check gave: the check as written, the conversation, the two texts, the confidence.
    (A `python:` check is keyed by its name, not its code: editing the function does not move the key.)"""
    return content_key("check", salt, principle.id, principle.check.model_dump(mode="json"), job.messages,
                       job.x, job.y, confidence)


def judge_pairs(engine, pairs: Sequence[Mapping], principles: Sequence, *, both_orders: bool = True,
                reasoning: bool = False, seed: int = 0, k: int = 2, templates: TemplateSet | None = None,
                reasoning_max_tokens: int = 128, clamp_to: tuple[float, float] = COT_CLAMP,
                layout: str = "question_first", reuse: VerdictReuse | None = None,
                check_confidence: float | None = None) -> list[dict]:
    """**Contract.** Judge each pair (`prompt`: a string or chat messages; `a`, `b`: response strings) under k
    of `principles` drawn per pair. Returns one record per pair, in order: the pair's own fields plus
    `verdicts` (per principle: p_a_first, p_a_second, reasoning_*), `p_a` (probability that `a` is better),
    `consistent` and `error` (None). A pair that could not be judged (too long for the context, an engine
    error) has `error` = 'reason: detail' and no verdicts. With `both_orders=False` only the order a-first is
    asked: p_a_second and consistent are None and there is no symmetry guarantee. `layout` picks the judge
    prompt's layout (see TEMPLATES); the numbers differ between layouts, the guarantees do not. `reuse`: verdicts
    known from an earlier run, taken instead of asked (VerdictReuse).

    With `check_confidence`, a principle with a `check` decides the pairs it separates itself, at that
    confidence, and only the rest reach the engine (`check_decisions`); every verdict records its `source`
    (`check` or `judge`) and the check's result on each side (`check_a`, `check_b`). A batch the checks decide
    entirely makes no engine call, so `engine` may be a lazy one that is never opened."""
    if not principles:
        raise ValueError("judge_pairs needs at least one principle to ask")
    templates = templates or TemplateSet()
    all_jobs, refs = plan(pairs, principles, k, seed, both_orders)
    decisions = {job.key: check_decisions(job, check_confidence) for job in all_jobs}
    asked = {job.key: Job(job.key, job.messages, job.x, job.y,
                          [p for p, (v, _) in zip(job.principles, decisions[job.key]) if v is None], job.both_orders)
             for job in all_jobs}
    jobs = [asked[job.key] for job in all_jobs if asked[job.key].principles]
    per_job = [conversations(job, templates, reasoning, layout) for job in jobs]
    keys, known = reuse.plan(jobs, per_job) if reuse else ([], {})
    # Every conversation still to score, as (job index, conversation index): a known verdict's are skipped.
    wanted = [(j, c) for j, job in enumerate(jobs) for c in range(len(per_job[j]))
              if (j, c // len(job.orders())) not in known]
    convs = [per_job[j][c] for j, c in wanted]
    reasons = [""] * len(convs)
    if reasoning and convs:
        convs, reasons = add_reasoning(engine, convs, templates.judge_prefix(), reasoning_max_tokens,
                                       derive_seed(seed, "judge", "reasoning"))
    scored = dict(zip(wanted, zip(score_all(engine, convs), reasons, strict=True), strict=True))
    llm = {}
    for j, job in enumerate(jobs):
        slots = [scored.get((j, c), (None, "")) for c in range(len(per_job[j]))]
        mine = {i: v for (jj, i), v in known.items() if jj == j}
        llm[job.key] = job_outcome(job, [s for s, _ in slots], [r for _, r in slots] if reasoning else [],
                                   clamp_to if reasoning else None, mine)
    outcomes = {job.key: merge(job, decisions[job.key], llm.get(job.key)) for job in all_jobs}
    if reuse:  # a check's verdict is keyed on the check and the two texts: recomputed always, it costs nothing
        by_key = {job.key: dict(zip((p.id for p in job.principles), keys[j], strict=True))
                  for j, job in enumerate(jobs)}
        checked = {job.key: {p.id: check_key(reuse.salt, p, job, check_confidence)
                             for p, (v, _) in zip(job.principles, decisions[job.key]) if v is not None}
                   for job in all_jobs}
        reuse.keys = [{**checked[key], **by_key.get(key, {})} for key, _ in refs]
    return [_record(pair, outcomes[key], swapped) for pair, (key, swapped) in zip(pairs, refs)]


def _record(pair: Mapping, outcome: dict | str, swapped: bool) -> dict:
    if isinstance(outcome, str):
        return {**pair, "error": outcome}
    return {**pair, **(swap(outcome) if swapped else outcome), "error": None}
