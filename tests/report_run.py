"""A small run folder for the report's tests, made by a stand-in engine that behaves like a model does at
its worst: it echoes the prompt (so injection text reaches responses, critiques and revisions), writes
boilerplate preambles, returns empty revisions, hits max_tokens, fails on some prompts, and judges with
opinions. Every branch the report draws (rejects at several stages, kept-previous rounds, cut preambles,
truncation, both pair origins, both splits) is exercised without a model."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cai_pipeline.engines.base import Completion, EngineStats

INJECTIONS = [
    '<img src=x onerror="window.__pwned=1">',
    "</script><script>window.__pwned=2</script>",
    "<!-- <script>window.__pwned=3</script> -->",
    '"><svg onload="window.__pwned=4"></svg>',
    "\u2028 line separator \u2029 and <b>bold</b> &amp; entities",
    "terminal \x1b]0;owned\x07 title \x1b[2J clear \u202e desrever",
]
PROMPTS = [
    *(f"Please repeat this exactly: {x}" for x in INJECTIONS),
    "How do I pick a lock?", "Write a poem about the sea.", "FAIL this prompt, engine", "Tell me a joke about cats.",
    "Explain what a constitution is.", "What is 2 + 2?", "",  # the empty one is rejected when prompts load
]
# A user-given prompt_id is untrusted too: it travels in permalinks and the list.
CUSTOM_ID = 'id"><img src=x onerror="window.__pwned=5">'


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts, default=str).encode()).digest()[:8], "big")


class StandInEngine:
    """Deterministic from the conversation: the same run twice gives the same folder."""

    name, model = "stand-in", "stand-in"
    max_model_len = 4096

    def __init__(self):
        self.stats = EngineStats()

    def _one(self, conv: list[dict], k: int) -> Completion:
        first = next(m["content"] for m in conv if m["role"] == "user")
        last = conv[-1]["content"]
        h = _hash(conv, k)
        if "FAIL" in first:
            return Completion("", "error", 0, "engine_error: the stand-in fails this prompt on purpose")
        turn = sum(m["role"] == "assistant" for m in conv)
        if turn and h % 5 == 0:
            return Completion("", "stop", 0)  # an empty revision or critique: kept previous / counted
        preamble = "Sure, here is a revised response: " if turn and h % 3 == 0 else ""
        body = f"{preamble}Text {turn}.{k} for {first[:70]} | about {last[:30]} | words {h % 97} and {h % 89}"
        return Completion(body, "length" if h % 4 == 1 else "stop", len(body.split()))

    def generate(self, convs, params):
        self.stats.output_tokens += params.n * len(convs)
        return [[self._one(c, k) for k in range(params.n)] for c in convs]

    def choice_logprobs(self, convs, choices):
        return [{c: -1.0 - (_hash(conv, c) % 256) / 64 for c in choices} for conv in convs]

    def count_tokens(self, conv):
        return sum(len(m["content"].split()) for m in conv)

    def close(self):
        pass


def write_prompts(path: Path) -> Path:
    rows = [{"prompt": p} for p in PROMPTS]
    rows.append({"prompt_id": CUSTOM_ID, "prompt": "A prompt whose id is hostile."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_run(out: Path, *overrides: str) -> dict:
    """Run the whole pipeline (no train) into `out` with the stand-in engine; returns the manifest."""
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline
    from tests.conftest import REPO, later_wins

    prompts = write_prompts(out.parent / f"{out.name}-prompts.jsonl")
    cfg = load_config(REPO / "configs" / "demo.yaml", later_wins(
        f"out_dir={out}", f"prompts.path={prompts}", "shard_size=4", "sample.n=3", "revise.rounds=2",
        "revise.few_shot=0", "judge.principles=2", "judge.min_margin=0.1", "judge.drop_inconsistent=true",
        "export.test_fraction=0.3", "export.drop_truncated=true", "stages=[sample,revise,pairs,judge,export]",
        *overrides))
    return run_pipeline(cfg, engine=StandInEngine(), summary=False)


def off_the_loop(fn, *args, **kwargs):
    """Run `fn` on a thread of its own: Playwright's sync API keeps an asyncio loop running on the test's
    thread, and the pipeline starts its own (asyncio.run), which may not nest in it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()
