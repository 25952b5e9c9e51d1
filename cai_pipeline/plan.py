"""`cai plan`: what a run will ask of its engines — requests, generated sequences, input and output tokens,
seconds and cost per stage — before it runs, and the same numbers beside the actual ones after it.

What is exact and what is estimated (docs/scale-out.md, "Plans before runs"):

- requests: one per conversation sent to an engine. Sample: one per prompt (its n sequences share the prompt);
  revise: a critique and a revision per round per sampled response; judge: pairs × principles × 2 orders
  (twice that with reasoning: the reasoning, then the scoring). Exact for sample and revise (while no sample
  comes back empty); pairs come from the config's pair rules, so the judge's count is exact unless pairs are
  dropped as identical.
- input tokens: counted with the model's tokenizer on the rendered conversations; the parts not written yet
  (responses, critiques) count at their expected output length.
- output tokens: `max_tokens` per sequence (an upper bound) unless a run folder — this run's own, or a short
  calibration run (`--calibrate N`) — shows the mean length, truncation included. A scoring request bills one
  output token on a hosted API.
- seconds: the observed seconds per request of each stage times the planned requests; without an observation
  they are unknown (None), never invented.
- cost: tokens × `engine.price_in_per_mtok` / `price_out_per_mtok`, less `engine.batch_discount` in batch mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cai_pipeline.assets import Assets
from cai_pipeline.judging import TEMPLATES, as_messages
from cai_pipeline.store import RunStore
from cai_pipeline.templates import transcript

Count = Callable[[list], int]  # tokens of a conversation as the model sees it
PLANNED = ("sample", "revise", "pairs", "judge")


class StageEstimate(BaseModel):
    """**Contract** (`cai plan --json`): one stage's numbers; seconds and cost are None when unknown."""

    model_config = ConfigDict(extra="forbid")
    requests: int
    input_tokens: int
    output_tokens: int
    seconds: float | None
    cost: float | None


class Plan(BaseModel):
    """**Contract**: `{"stages": {name: StageEstimate}, "total": StageEstimate}`."""

    model_config = ConfigDict(extra="forbid")
    stages: dict[str, StageEstimate]
    total: StageEstimate


@dataclass
class Observed:
    """What a run folder shows per stage: mean output tokens per generated sequence, seconds per request,
    and the share of sequences cut at max_tokens."""

    source: str
    out_per_sequence: dict[str, float] = field(default_factory=dict)
    seconds_per_request: dict[str, float] = field(default_factory=dict)
    truncated: dict[str, float] = field(default_factory=dict)


@dataclass
class Estimate:
    requests: int = 0
    sequences: int = 0
    input_tokens: float = 0
    output_tokens: float = 0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------
# What a run folder shows


def observe(path: str | Path) -> Observed | None:
    """Lengths and timings from a run folder's manifest (None when it holds no finished shard with counts)."""
    store = RunStore(path)
    manifest = store.read_manifest() if store.layout.manifest.exists() else None
    if not manifest:
        return None
    seen = Observed(str(path))
    for name, entry in manifest.get("stages", {}).items():
        requests, sequences = entry.get("requests", 0), entry.get("sequences", 0)
        if entry.get("shards_done") and requests:
            seen.seconds_per_request[name] = entry["seconds"] / requests
        if entry.get("shards_done") and sequences:
            seen.out_per_sequence[name] = entry["output_tokens"] / sequences
    counts = manifest.get("stages", {}).get("revise", {}).get("counts", {})
    if counts.get("rounds"):
        cut = counts.get("truncated_critique", 0) + counts.get("truncated_revision", 0)
        seen.truncated["revise"] = cut / (2 * counts["rounds"])
    if store.shard_indices("sample"):
        rows = [r for i in store.shard_indices("sample") for r in store.read_shard("sample", i)]
        if rows:
            seen.truncated["sample"] = sum(r["finish_reason"] == "length" for r in rows) / len(rows)
    return seen if seen.out_per_sequence or seen.seconds_per_request else None


def _length(observed: Observed | None, stage: str, max_tokens: int) -> tuple[float, str]:
    if observed and stage in observed.out_per_sequence:
        cut = observed.truncated.get(stage)
        extra = f", {cut:.0%} cut at max_tokens" if cut is not None else ""
        return observed.out_per_sequence[stage], f"output: {observed.out_per_sequence[stage]:.0f} tokens per " \
            f"sequence as observed in {observed.source}{extra}"
    return float(max_tokens), f"output: max_tokens ({max_tokens}) per sequence, an upper bound"


# ---------------------------------------------------------------------------------------------------------
# Per stage


COUNTED = 5000  # prompts tokenised one by one; beyond, an evenly spaced sample of this many, scaled (a run
# plans itself when it starts, and a chat template costs about a millisecond a prompt)
FRAMES = 200  # prompts whose judge prompts are rendered to measure the judge's frame


def spread(rows: list, k: int) -> list:
    """At most k of `rows`, evenly spaced (all of them when there are no more than k)."""
    return rows if len(rows) <= k else [rows[i * len(rows) // k] for i in range(k)]


def plan_sample(cfg, prompts: list[dict], count: Count, observed: Observed | None) -> tuple[Estimate, float]:
    length, note = _length(observed, "sample", cfg.sample.max_tokens)
    n = cfg.sample.n
    est = Estimate(requests=len(prompts), sequences=len(prompts) * n, notes=[note])
    some = spread(prompts, COUNTED)
    est.input_tokens = sum(count(p["prompt"]) for p in some) * len(prompts) / max(1, len(some))
    if len(some) < len(prompts):
        est.notes.append(f"input: {len(some)} of {len(prompts)} prompts tokenised, scaled")
    est.output_tokens = est.sequences * length
    return est, length


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _user(text: str) -> list:
    return [{"role": "user", "content": text}]


def revise_turns(assets: Assets, count: Count) -> tuple[float, float, float]:
    """Mean tokens of a critique request's turn, a revision request's turn, and the few-shot block."""
    principles = assets.constitution.principles
    critique = _mean([count(_user(assets.templates.render("critique", principle=p))) for p in principles])
    revision = _mean([count(_user(assets.templates.render("revision", principle=p))) for p in principles])
    shots = assets.constitution.few_shot
    shot = _mean([count([{"role": "user", "content": s.prompt}, {"role": "assistant", "content": s.response},
                         *_user(s.critique), *_user(s.revision)]) + critique + revision for s in shots])
    return critique, revision, shot * min(assets.cfg.revise.few_shot, len(shots))


def plan_revise(cfg, assets: Assets, rows: int, prompt_tokens: float, response: float, count: Count,
                observed: Observed | None) -> tuple[Estimate, float]:
    """rows: sampled responses; prompt_tokens: their prompts' tokens in all. Each round's critique request
    holds everything before it; its revision request adds the critique and the revision question."""
    length, note = _length(observed, "revise", cfg.revise.max_tokens)
    critique, revision, shots = revise_turns(assets, count)
    rounds = cfg.revise.rounds
    est = Estimate(requests=rows * rounds * 2, sequences=rows * rounds * 2, notes=[note])
    per_row = 0.0
    for r in range(rounds):
        before = shots + response + r * (critique + length + revision + length)
        per_row += (before + critique) + (before + critique + length + revision)
    est.input_tokens = prompt_tokens * rounds * 2 + rows * per_row
    est.output_tokens = est.sequences * length
    return est, length


def pairs_per_prompt(cfg) -> tuple[int, int]:
    """(sampled, revision) pairs a prompt makes under the config's pair rules (stages/pairs.py)."""
    n = cfg.sample.n
    combos = n * (n - 1) // 2
    limit = cfg.pairs.max_sampled_per_prompt or (combos if n <= 4 else n)
    sampled = min(combos, limit) if cfg.pairs.sampled else 0
    revision = n if cfg.pairs.revision and "revise" in cfg.stages else 0
    return sampled, revision


def plan_judge(cfg, assets: Assets, prompts: list[dict], response: float, revised: float, count: Count,
               observed: Observed | None) -> Estimate:
    """Every pair × k principles × 2 orders; a judge conversation holds the prompt, both responses and the
    principle's question."""
    j = cfg.judge
    sampled, revision = pairs_per_prompt(cfg)
    name = TEMPLATES[j.layout, j.reasoning]
    questions = [p.comparison for p in assets.constitution.principles]
    frame = _mean([count(_user(assets.templates.render(name, conversation=transcript(as_messages(p["prompt"])),
                                                       question=q, response_a="", response_b="")))
                   for p in spread(prompts, FRAMES) for q in questions[:4]])  # the prompt, question, layout
    per = 2 * j.principles
    convs = len(prompts) * (sampled + revision) * per
    tokens = len(prompts) * per * (sampled * (frame + 2 * response) + revision * (frame + response + revised))
    est = Estimate(requests=convs, input_tokens=tokens, output_tokens=convs,
                   notes=[f"{sampled + revision} pairs per prompt × {j.principles} principles × 2 orders; "
                          "a scoring request bills 1 output token"])
    if j.reasoning:
        length, note = _length(observed, "judge", j.reasoning_max_tokens)
        est.requests, est.sequences = 2 * convs, convs
        est.input_tokens *= 2
        est.output_tokens += convs * length
        est.notes.append(f"reasoning {note}")
    return est


# ---------------------------------------------------------------------------------------------------------
# The plan


def stage_estimates(cfg, assets: Assets, count: Count, observed: Observed | None = None,
                    judge_count: Count | None = None) -> dict[str, Estimate]:
    """Per planned stage (those of cfg.stages that call a model, and pairs), its Estimate."""
    prompts = assets.prompts.rows
    wanted = [s for s in PLANNED if s in cfg.stages]
    out: dict[str, Estimate] = {}
    sample, response = plan_sample(cfg, prompts, count, observed)
    if "sample" in wanted:
        out["sample"] = sample
    revised = response
    if "revise" in wanted:
        out["revise"], revised = plan_revise(cfg, assets, sample.sequences, sample.input_tokens * cfg.sample.n,
                                             response, count, observed)
    if "pairs" in wanted:
        sampled, revision = pairs_per_prompt(cfg)
        out["pairs"] = Estimate(notes=[f"{(sampled + revision) * len(prompts)} pairs; no model"])
    if "judge" in wanted:
        out["judge"] = plan_judge(cfg, assets, prompts, response, revised, judge_count or count, observed)
    return out


def price(cfg, input_tokens: float, output_tokens: float) -> float | None:
    e = cfg.engine
    if e.price_in_per_mtok is None or e.price_out_per_mtok is None:
        return None
    full = (input_tokens * e.price_in_per_mtok + output_tokens * e.price_out_per_mtok) / 1e6
    return round(full * ((1 - e.batch_discount) if e.batch else 1), 6)


def make_plan(cfg, estimates: dict[str, Estimate], observed: Observed | None = None) -> Plan:
    stages = {}
    for name, est in estimates.items():
        rate = observed.seconds_per_request.get(name) if observed else None
        seconds = 0.0 if est.requests == 0 else (round(rate * est.requests, 1) if rate is not None else None)
        stages[name] = StageEstimate(requests=est.requests, input_tokens=math.ceil(est.input_tokens),
                                     output_tokens=math.ceil(est.output_tokens), seconds=seconds,
                                     cost=price(cfg, est.input_tokens, est.output_tokens))
    return Plan(stages=stages, total=total_of(stages.values()))


def total_of(stages) -> StageEstimate:
    stages = list(stages)

    def known(key: str) -> float | None:
        values = [getattr(s, key) for s in stages]
        return None if any(v is None for v in values) else round(sum(values), 6)

    return StageEstimate(requests=sum(s.requests for s in stages), input_tokens=sum(s.input_tokens for s in stages),
                         output_tokens=sum(s.output_tokens for s in stages), seconds=known("seconds"),
                         cost=known("cost"))


def token_counter(model: str) -> tuple[Count, str]:
    """(count, how): the model's tokenizer where it is on this machine, else ~4 characters a token."""
    from cai_pipeline.engines.chat import prompt_ids
    from cai_pipeline.engines.openai import local_tokenizer

    tokenizer = local_tokenizer(model)
    if tokenizer is not None:
        return (lambda conv: len(prompt_ids(tokenizer, conv))), f"tokens counted with {model}'s tokenizer"
    return (lambda conv: sum(len(m["content"]) // 4 + 4 for m in conv)), \
        f"tokens estimated (~4 characters each): {model}'s tokenizer is not on this machine"


def actual(manifest: dict, stage: str) -> dict | None:
    """The run's own numbers for a planned stage, from its manifest entry."""
    entry = manifest.get("stages", {}).get(stage)
    if not entry or "shards_total" not in entry:
        return None
    return {k: entry.get(k) for k in ("requests", "output_tokens", "seconds")}
