"""The pairs a judge check probes: a run's own pairs (pairs/), or labelled pairs from a file (what `cai
judge-eval` reads: hh-rlhf transcripts or prompt/chosen/rejected), and another model's responses for the
`self` probe."""

from __future__ import annotations

from cai_pipeline.errors import UserError
from cai_pipeline.inputs import load_prompts, prompt_id
from cai_pipeline.judge_check.profile import CheckPair
from cai_pipeline.rng import stable_id
from cai_pipeline.store import RunStore


def spread(pairs: list[CheckPair], limit: int | None, seed: int) -> list[CheckPair]:
    """`limit` pairs drawn by hashed pair id (the same ones every time, spread over the prompts), in input order."""
    if limit is None or len(pairs) <= limit:
        return pairs
    keep = set(sorted(range(len(pairs)), key=lambda i: stable_id(seed, "judge-check", pairs[i].pair_id))[:limit])
    return [p for i, p in enumerate(pairs) if i in keep]


def run_pairs(cfg, limit: int | None) -> list[CheckPair]:
    """The run's pairs (pairs/, every pair it made, judged or not), benign where the prompt file tags them so."""
    store = RunStore(cfg.out_dir)
    rows = store.read_stage("pairs") if store.root.is_dir() else []
    if not rows:
        raise UserError(f"{store.layout.stage_dir('pairs')}: no pairs in the run folder; run `cai run CONFIG` (at "
                        "least --stages sample,pairs) first, or check a file with `cai judge-check --data FILE`")
    p = cfg.prompts
    loaded = load_prompts(p.path, fmt=p.format, limit=p.limit, system_prompt=p.system_prompt, part=p.part,
                          parts=p.parts, keep=("tag",))
    tags = {r["prompt_id"]: r["tag"] for r in loaded.rows}
    pairs = [CheckPair(r["pair_id"], r["prompt_id"], r["prompt"], r["a"], r["b"],
                       benign=tags.get(r["prompt_id"]) == "benign") for r in rows]
    return spread(pairs, limit, cfg.seed)


def data_pairs(path: str, limit: int | None, benign: bool) -> list[CheckPair]:
    """Labelled pairs from a file, as `cai judge-eval` reads them (which side people chose does not matter here:
    every probe is applied to both sides)."""
    from cai_pipeline.judge_eval import read_labelled

    labelled, _ = read_labelled(path, limit)
    pairs = []
    for row in labelled:
        pid = prompt_id(row["prompt"])
        pairs.append(CheckPair(stable_id(pid, row["chosen"], row["rejected"]), pid, row["prompt"], row["chosen"],
                               row["rejected"], benign=benign))
    return pairs


def attach_other(pairs: list[CheckPair], path: str) -> int:
    """Another model's response to each pair's prompt, from a JSONL/Parquet/CSV file with `prompt` (or
    `messages`, or `prompt_id`) and `response`; matched by prompt id. Returns how many pairs got one."""
    loaded = load_prompts(path, keep=("response",))
    other = {}
    for row in loaded.rows:
        if not isinstance(row["response"], str) or not row["response"].strip():
            raise UserError(f"--other: {path}: the row of prompt {row['prompt_id']} has no 'response' text; every "
                            "row needs the other model's response as a string")
        other[row["prompt_id"]] = row["response"]
    for pair in pairs:
        pair.other = other.get(pair.prompt_id)
    matched = sum(p.other is not None for p in pairs)
    if not matched:
        raise UserError(f"--other: {path}: none of its prompts is a prompt of the pairs checked; give the other "
                        "model's responses to the same prompts")
    return matched
