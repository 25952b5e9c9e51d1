"""Revise: K rounds of critique → revision per sampled response, a principle drawn at random each round.

Each row is one chain (see engines/chains.py): on vLLM every row's next step starts as soon as its last one
finished; on other engines each step of all rows goes as one batch. The conversation carries on across
rounds, as in the CAI paper: round 2 critiques round 1's revision with the earlier turns in view.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from cai_pipeline.constitution import draw_principles
from cai_pipeline.engines.base import Completion, GenParams, Message
from cai_pipeline.engines.chains import Gen, run_chains
from cai_pipeline.rng import derive_seed
from cai_pipeline.rowkeys import chain_key, round_key
from cai_pipeline.stages.base import StageContext, StageResult, error_reason, make_reject

# "Sure, here is a revised response:" and its many cousins, at the very start of a revision. It must open with
# an assent, a "here is" or an adjective: "Response times vary: check the docs" is content, not a preamble.
_PREAMBLE = re.compile(
    r"^\s*(?=(?:sure|certainly|okay|ok|of course|absolutely|alright|here|below|this|revised|rewritten|improved"
    r"|updated|new|better|edited)\b)"
    r"(?:(?:sure|certainly|okay|ok|of course|absolutely|alright)[,.!]?\s*)?"
    r"(?:(?:here(?:'s| is| are)|below is|this is)\s+(?:a|an|the|my)?\s*)?"
    r"(?:(?:revised|rewritten|improved|updated|new|better|edited)\s+)?"
    r"(?:response|version|answer|revision|reply|rewrite)\b[^\n:]{0,60}:\s*",
    re.IGNORECASE,
)
_LABEL = re.compile(r"^\s*(?:revision|revised response|rewrite|response)\s*:\s*", re.IGNORECASE)


def clean_revision(text: str) -> tuple[str, bool]:
    """Cut a boilerplate preamble or label off a revision; say whether anything was cut."""
    cleaned = _LABEL.sub("", _PREAMBLE.sub("", text, count=1), count=1).strip()
    if len(cleaned) >= 2 and cleaned[0] == cleaned[-1] == '"' and cleaned.count('"') == 2:
        cleaned = cleaned[1:-1].strip()
    return cleaned, cleaned != text.strip()


class ChainFailed(Exception):
    def __init__(self, reason: str, detail: str, rounds: list[dict]):
        super().__init__(detail)
        self.reason, self.detail, self.rounds = reason, detail, rounds


@dataclass
class Revised:
    row: dict
    counts: Counter = field(default_factory=Counter)
    keys: dict = field(default_factory=dict)  # {"base": chain key, "rounds": [round keys]}
    reuse: str = "added"  # against an old run: reused (every round), recomputed (from some round on), added


def checked(principle, prompt: list[Message], response: str) -> dict | None:
    """The principle's check on a response to `prompt`, as {passed, reason}; None without a check."""
    result = principle.run_check(prompt, response)
    return None if result is None else result.as_dict()


def skipped_round(principle, result: dict) -> dict:
    """A round not run: the response already passes the drawn principle's check (revise.revise_passing false)."""
    return {"principle_id": principle.id, "critique": "", "revision": "", "cleaned": False,
            "kept_previous": "passes_check", "truncated": False, "check_before": result, "check_after": result,
            "skipped": True}


def few_shot_turns(ctx: StageContext, rng, k: int) -> list[Message]:
    """k of the constitution's worked examples as earlier turns of the conversation."""
    shots = ctx.constitution.few_shot
    if k <= 0 or not shots:
        return []
    by_id = {p.id: p for p in ctx.constitution.principles}
    turns: list[Message] = []
    for shot in rng.sample(shots, min(k, len(shots))):
        principle = by_id[shot.principle_id]
        turns += [
            {"role": "user", "content": shot.prompt}, {"role": "assistant", "content": shot.response},
            {"role": "user", "content": ctx.templates.render("critique", principle=principle)},
            {"role": "assistant", "content": shot.critique},
            {"role": "user", "content": ctx.templates.render("revision", principle=principle)},
            {"role": "assistant", "content": shot.revision},
        ]
    return turns


def _params(ctx: StageContext, row: tuple, *keys: object) -> GenParams:
    """A step's parameters. Its seed is the shard call's, or with engine.row_seeds the row's own (from its ids),
    so the step's output does not depend on which other rows run beside it."""
    r = ctx.cfg.revise
    seed = derive_seed(ctx.seed, "revise", *row, *keys) if ctx.cfg.engine.row_seeds else ctx.call_seed("revise", *keys)
    return GenParams(n=1, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, seed=seed)


async def _ask(gen: Gen, conv: list[Message], params: GenParams, step: str, rounds: list[dict]) -> Completion:
    comp = (await gen(conv, params))[0]
    if comp.finish_reason == "error":
        raise ChainFailed(error_reason(comp), f"{step}: {comp.error}", rounds)
    return comp


def _reused_round(old: dict, counts: Counter) -> tuple[str | None, dict]:
    """An old round taken as it is: (the text it left as current, or None where it kept the previous one),
    and the round. Its counts are those its fields tell (a critique's truncation is not stored)."""
    counts.update({"rounds": 1, "cleaned_preamble": int(old["cleaned"]), "empty_critique": int(not old["critique"]),
                   "truncated_revision": int(old["truncated"]), "reuse:rounds_reused": 1})
    if not old.get("skipped"):
        _count_check(counts, old.get("check_before"), old.get("check_after"))
    if old["kept_previous"]:
        counts[f"kept_previous:{old['kept_previous']}"] += 1
        return None, old
    return clean_revision(old["revision"])[0], old


def _old_chain(ctx: StageContext, key: tuple) -> tuple[list[str], dict | None]:
    """The old run's round keys and row for this chain ([] and None where it has none)."""
    entry = ctx.reuse.stage("revise").get(f"{key[0]}/{key[1]}") if ctx.reuse else None
    return (entry["key"]["rounds"], entry["rows"][0]) if entry else ([], None)


def _count_check(counts: Counter, before: dict | None, after: dict | None) -> None:
    """How often a round turns a failing check into a pass, and the other way (nothing without a check)."""
    if before:
        counts.update({"check_fixed": int(not before["passed"] and after["passed"]),
                       "check_broken": int(before["passed"] and not after["passed"])})


def _computed_round(principle, critique, revision, before: dict | None, current: str, prompt: list[Message],
                    counts: Counter) -> tuple[dict, str]:
    """A round the engine answered: its record, and the text it leaves as current (the previous one where the
    revision came back empty)."""
    text, cleaned = clean_revision(revision.text)
    kept = "empty_revision" if not text else None
    # An empty critique is kept (the revision still ran) and counted, so a run shows how often it happens.
    counts.update({"rounds": 1, "cleaned_preamble": int(cleaned), "empty_critique": int(not critique.text.strip()),
                   "truncated_critique": int(critique.finish_reason == "length"),
                   "truncated_revision": int(revision.finish_reason == "length")})
    if kept:
        counts[f"kept_previous:{kept}"] += 1
    else:
        current = text
    after = checked(principle, prompt, current)
    _count_check(counts, before, after)
    return {"principle_id": principle.id, "critique": critique.text.strip(), "revision": revision.text.strip(),
            "cleaned": cleaned, "kept_previous": kept, "truncated": revision.finish_reason == "length",
            "check_before": before, "check_after": after, "skipped": False}, current


async def revise_row(gen: Gen, sample: dict, ctx: StageContext) -> Revised:
    """One response through K critique → revision rounds. With `--reuse`, the old chain's rounds are taken as
    long as their keys (rowkeys.round_key: the chain so far and the round's rendered requests) match; from the
    first round that differs on, the rounds are computed."""
    key = (sample["prompt_id"], sample["sample_idx"])
    conv: list[Message] = [*sample["prompt"], {"role": "assistant", "content": sample["response"]}]
    shots = few_shot_turns(ctx, ctx.rng("revise-shots", *key), ctx.cfg.revise.few_shot)
    current, rounds, counts, keys = sample["response"], [], Counter(), []
    chain = chain_key(ctx.cfg, sample, shots)
    old_keys, old_row = _old_chain(ctx, key)
    current_truncated = sample["finish_reason"] == "length"
    for r in range(ctx.cfg.revise.rounds):
        [principle] = draw_principles(ctx.constitution.principles, ctx.seed, ("revise", *key, r), 1,
                                      exclude=[x["principle_id"] for x in rounds])
        before = checked(principle, sample["prompt"], current)
        if before and before["passed"] and not ctx.cfg.revise.revise_passing:
            # Free to redo, so never taken from an old run; its key still chains the rounds after it.
            keys.append(round_key(keys[-1] if keys else chain, principle.id, "skipped: passes its check", str(before)))
            rounds.append(skipped_round(principle, before))
            counts.update({"rounds": 1, "skipped_passing_check": 1})
            continue
        variables = {"principle": principle, "check": before}
        ask_critique = ctx.templates.render("critique", **variables)
        ask_revision = ctx.templates.render("revision", **variables)
        keys.append(round_key(keys[-1] if keys else chain, principle.id, ask_critique, ask_revision))
        conv = conv + [{"role": "user", "content": ask_critique}]
        # Keys chain: round r's key matches only where every earlier round's did (and was taken).
        if r < len(old_keys) and old_keys[r] == keys[r]:
            text, old_round = _reused_round(old_row["rounds"][r], counts)
            conv = conv + [{"role": "assistant", "content": old_round["critique"]},
                           {"role": "user", "content": ask_revision}]
            rounds.append(old_round)
            if text is not None:
                current, current_truncated = text, old_round["truncated"]
            conv = conv + [{"role": "assistant", "content": current}]
            continue
        counts["reuse:rounds_computed"] += 1
        critique = await _ask(gen, shots + conv, _params(ctx, key, r, "critique"), f"round {r} critique", rounds)
        conv = conv + [{"role": "assistant", "content": critique.text.strip()},
                       {"role": "user", "content": ask_revision}]
        revision = await _ask(gen, shots + conv, _params(ctx, key, r, "revision"), f"round {r} revision", rounds)
        done, current = _computed_round(principle, critique, revision, before, current, sample["prompt"], counts)
        rounds.append(done)
        if not done["kept_previous"]:
            current_truncated = done["truncated"]
        conv = conv + [{"role": "assistant", "content": current}]
    if old_row is not None and old_keys == keys:  # every round reused: the old row, byte for byte
        return Revised(old_row, counts, {"base": chain, "rounds": keys}, "reused")
    row = {k: sample[k] for k in ("prompt_id", "sample_idx", "prompt")}
    return Revised({**row, "initial": sample["response"], "initial_truncated": sample["finish_reason"] == "length",
                    "rounds": rounds, "final": current, "final_truncated": current_truncated}, counts,
                   {"base": chain, "rounds": keys}, "recomputed" if old_row is not None else "added")


async def _guarded(gen: Gen, sample: dict, ctx: StageContext) -> Revised | ChainFailed:
    try:
        return await revise_row(gen, sample, ctx)
    except ChainFailed as failure:
        return failure
    finally:
        if ctx.progress:  # a revision chain is the slowest unit of a run: report each one as it ends
            ctx.progress(1)


def run(inputs: dict[str, list[dict]], engine, ctx: StageContext) -> StageResult:
    samples = inputs["sample"]
    chains = [lambda gen, s=s: _guarded(gen, s, ctx) for s in samples]
    out = StageResult(keys={"rows": {}})
    for sample, res in zip(samples, run_chains(engine, chains, mode=ctx.cfg.revise.mode), strict=True):
        if isinstance(res, ChainFailed):
            key = f"{sample['prompt_id']}/{sample['sample_idx']}"
            out.rejects.append(make_reject("revise", key, res.reason, res.detail, {**sample, "rounds": res.rounds}))
        else:
            out.rows.append(res.row)
            out.counts.update(res.counts)
            out.keys["rows"][f"{sample['prompt_id']}/{sample['sample_idx']}"] = res.keys
            out.counts[f"reuse:{res.reuse}"] += 1
    if not ctx.reuse:  # nothing to reuse from: no reuse counters in the manifest
        out.counts = Counter({k: v for k, v in out.counts.items() if not k.startswith("reuse:")})
    return out
