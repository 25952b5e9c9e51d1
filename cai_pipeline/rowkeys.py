"""Content keys of rows: the hash of everything that made a row (prompt messages, model, settings, seed, the
rendered principle texts and templates it used, its upstream rows). Two rows with one key were made from the
same inputs, so `cai run --reuse OLD` may take the old one instead of computing it (reuse.py, docs/reuse.md).

A key is a plain function of values; the stages compute them as they go and the store keeps them beside each
shard (keys/<stage>/part-NNNNN.json), so a Parquet folder stays Parquet only."""

from __future__ import annotations

import hashlib
import json

from cai_pipeline.fingerprint import OPERATIONAL

# Settings that change how rows are scheduled, never what they hold: not part of any key.
_REVISE_UNKEYED = {"rounds", "mode"}  # `rounds` is the chain's length: each round has its own key


def content_key(*parts: object) -> str:
    """32 hex digits of sha256 over the JSON of `parts` (dict key order aside)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def model_settings(cfg, model: str) -> dict:
    """The model and the engine settings that shape what it returns."""
    engine = {k: v for k, v in cfg.engine.model_dump().items() if k not in OPERATIONAL}
    return {"model": model, "engine": engine}


def sample_key(cfg, prompt: dict) -> str:
    """A prompt's samples: its messages, the policy model, the sampling settings and the seed."""
    return content_key("sample", prompt["prompt"], model_settings(cfg, cfg.model), cfg.sample.model_dump(), cfg.seed)


def chain_key(cfg, sample: dict, shots: list) -> str:
    """A revise chain before its first round: the sample it starts from and the few-shot turns it shows."""
    revise = {k: v for k, v in cfg.revise.model_dump().items() if k not in _REVISE_UNKEYED}
    return content_key("revise", sample_key(cfg, sample), sample["sample_idx"], sample["response"],
                       sample["finish_reason"], model_settings(cfg, cfg.model), revise, cfg.seed, shots)


def round_key(previous: str, principle_id: str, critique_request: str, revision_request: str) -> str:
    """One critique → revision round: the chain so far and the two requests as rendered (the principle's
    texts through the templates), so an edit of either moves the key and nothing else does."""
    return content_key(previous, principle_id, critique_request, revision_request)


def pair_key(pair: dict) -> str:
    """A pair is made from its members' texts alone: its key is its content."""
    return content_key("pair", pair)


def judge_salt(cfg) -> str:
    """What every verdict of a run shares: the judge model, its engine settings, the judging settings that
    shape a verdict (not the filters applied after it), and the seed where the judge writes reasoning."""
    j = cfg.judge
    return content_key("judge", model_settings(cfg, j.model or cfg.model), j.reasoning, j.layout,
                       j.reasoning_max_tokens if j.reasoning else None, cfg.seed if j.reasoning else None)


def verdict_key(salt: str, conversations: list) -> str:
    """One principle's verdict on one pair: the judge conversations of both orders as rendered (the pair's
    texts, the principle's comparison question, the judge template)."""
    return content_key(salt, conversations)
