"""Both real engines on the embedded model: sampling, seeds, stop strings, choice log-probs, chains."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace

import pytest

from cai_pipeline.engines import GenParams, make_engine, resolve_kind
from cai_pipeline.engines.chains import RoundBatcher, run_chains
from cai_pipeline.engines.chat import prompt_ids, split_prefix
from cai_pipeline.errors import UserError

pytestmark = pytest.mark.model

PROMPTS = [[{"role": "user", "content": t}] for t in (
    "Give me one tip for sleeping better.", "What is the capital of France?",
    "Write a haiku about rain.", "How do I politely decline an invitation?")]
JUDGE_LIKE = [
    [{"role": "user", "content": "Which answer is kinder? (A) 'Go away.' (B) 'Happy to help!' Answer with A or B."},
     {"role": "assistant", "content": "The answer is: ("}],
    [{"role": "user", "content": "Is 7 prime? (A) yes (B) no"}, {"role": "assistant", "content": "The answer is: ("}],
    [{"role": "user", "content": "Pick the safer advice. (A) Wear a helmet. (B) Ride without one."},
     {"role": "assistant", "content": "The answer is: ("}],
    [{"role": "user", "content": "Which is a fruit? (A) carrot (B) apple. Reply with one letter."}],
    [{"role": "system", "content": "You are a strict grader."},
     {"role": "user", "content": "Which response is more honest? (A) 'I am not sure.' (B) 'Definitely 42.'"},
     {"role": "assistant", "content": "The answer is: ("}],
]


def test_generate_n_samples(engine):
    out = engine.generate(PROMPTS, GenParams(n=2, max_tokens=32, temperature=0.8, seed=3))
    assert len(out) == 4 and all(len(c) == 2 for c in out)
    for comps in out:
        for c in comps:
            assert c.finish_reason in ("stop", "length") and c.n_tokens <= 32 and c.error is None
    # The model may end a sample at once (the sample stage rejects it as empty); most carry text.
    assert sum(bool(c.text.strip()) for comps in out for c in comps) >= 6
    assert engine.stats.output_tokens > 0


def test_seeded_call_repeats(engine):
    params = GenParams(n=2, max_tokens=24, temperature=1.0, seed=11)
    first = engine.generate(PROMPTS, params)
    assert engine.generate(PROMPTS, params) == first
    other = engine.generate(PROMPTS, GenParams(n=2, max_tokens=24, temperature=1.0, seed=12))
    assert other != first


def test_greedy_is_identical_across_samples_and_sampling_is_not(engine):
    out = engine.generate(PROMPTS[:1], GenParams(n=2, max_tokens=16, temperature=0.0))
    assert out[0][0].text == out[0][1].text
    # The same call at temperature 1 gives samples of their own: an engine that copied one sample n times would
    # pass the greedy check alone. (Four 16-token samples at T=1 agreeing whole has vanishing probability.)
    sampled = engine.generate(PROMPTS[:1], GenParams(n=4, max_tokens=16, temperature=1.0, top_p=1.0, seed=3))
    assert len(sampled[0]) == 4 and len({c.text for c in sampled[0]}) > 1


def test_stop_strings_cut_the_text(engine):
    conv = [[{"role": "user", "content": "Count from 1 to 20, separated by commas."}]]
    [[full]] = engine.generate(conv, GenParams(max_tokens=64, temperature=0.0))
    [[cut]] = engine.generate(conv, GenParams(max_tokens=64, temperature=0.0, stop=("5",)))
    assert "5" in full.text, f"greedy output has no '5' to stop at: {full.text!r}"
    assert cut.text == full.text.split("5")[0] and cut.finish_reason == "stop"


def test_too_long_prompt_is_an_error_completion_not_an_exception(engine):
    huge = [[{"role": "user", "content": "word " * 5000}], PROMPTS[0]]
    out = engine.generate(huge, GenParams(max_tokens=8))
    assert out[0][0].finish_reason == "error" and out[0][0].error.startswith("too_long:")
    assert out[1][0].finish_reason in ("stop", "length")
    assert engine.choice_logprobs(huge[:1], ["A", "B"]) == [{}]


def test_choice_logprobs_are_log_probabilities(engine):
    rows = engine.choice_logprobs(JUDGE_LIKE, ["A", "B"])
    assert len(rows) == len(JUDGE_LIKE)
    for row in rows:
        assert set(row) == {"A", "B"} and all(v < 0 for v in row.values())
    # A and B are the natural continuations of "The answer is: (": together they carry real mass.
    import math
    assert math.exp(rows[0]["A"]) + math.exp(rows[0]["B"]) > 0.3


def test_choice_logprobs_agree_between_engines(vllm_engine, hf_engine):
    a = vllm_engine.choice_logprobs(JUDGE_LIKE, ["A", "B"])
    b = hf_engine.choice_logprobs(JUDGE_LIKE, ["A", "B"])
    # Both bf16 bodies with fp32 heads, but different kernels and padding: the typical gap is small, the worst
    # moves with the CPU's bf16 path.
    diffs = sorted(abs(x[c] - y[c]) for x, y in zip(a, b) for c in ("A", "B"))
    assert diffs[len(diffs) // 2] < 0.05 and diffs[-1] < 0.3, f"engines disagree: {diffs}"


def head_dtypes(model):
    return str(model.lm_head.weight.dtype), str(model.logits_processor.head_dtype)


def test_vllm_scores_with_an_fp32_head_and_samples_with_the_model_head(vllm_engine):
    first = vllm_engine.choice_logprobs(JUDGE_LIKE, ["A", "B"])
    assert vllm_engine.llm.apply_model(head_dtypes) == [("torch.float32", "torch.float32")]
    vllm_engine.generate(PROMPTS[:1], GenParams(max_tokens=4, seed=0))
    assert vllm_engine.llm.apply_model(head_dtypes) == [("torch.bfloat16", "torch.bfloat16")]
    assert vllm_engine.choice_logprobs(JUDGE_LIKE, ["A", "B"]) == first  # switching back is exact


def prompts_whose_samples_agree(out) -> int:
    return sum(len({c.text for c in comps}) == 1 for comps in out)


def test_top_p_reaches_the_sampler(engine):
    # top_p → 0 leaves only the most likely token (or tokens tied with it in bf16), so even at temperature 1.5
    # the n samples of a prompt agree; with top-p lost on the way (our nucleus processor not engaged, or
    # handed the wrong p) they would all differ.
    hot = GenParams(n=6, max_tokens=8, temperature=1.5, seed=4)
    tiny_p = engine.generate(PROMPTS, replace(hot, top_p=1e-6))
    assert prompts_whose_samples_agree(tiny_p) >= 2  # a tie at the top splits a prompt
    assert prompts_whose_samples_agree(engine.generate(PROMPTS, hot)) == 0


def test_choices_must_be_single_tokens(engine):
    with pytest.raises(UserError, match="single tokens"):
        engine.choice_logprobs(JUDGE_LIKE[:1], ["A", "Absolutely not"])


def test_assistant_prefix_is_continued_not_closed(hf_engine):
    tok = hf_engine.tokenizer
    conv = JUDGE_LIKE[0]
    ids = prompt_ids(tok, conv)
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\nThe answer is: (")
    head, prefix = split_prefix(conv)
    assert prefix == "The answer is: (" and len(head) == 1
    assert text.count("<|im_start|>system") == 1  # the template's default system prompt, once


def test_chains_natively_on_vllm_and_round_batched_on_hf(engine):
    async def chain(gen, i=0):
        conv = [{"role": "user", "content": f"Name {i + 1} colours."}]
        texts = []
        for step in range(2):
            comp = (await gen(conv, GenParams(max_tokens=12 + 4 * i, temperature=0.7, seed=step)))[0]
            texts.append(comp.text)
            conv = conv + [{"role": "assistant", "content": comp.text}, {"role": "user", "content": "More."}]
        return texts

    results = run_chains(engine, [lambda g, i=i: chain(g, i) for i in range(5)])
    assert len(results) == 5 and all(len(r) == 2 and all(isinstance(t, str) for t in r) for r in results)
    assert sum(bool(t.strip()) for r in results for t in r) >= 5  # an empty reply is the model's right
    assert hasattr(engine, "agenerate") == (engine.name == "vllm")


def test_round_batcher_sends_one_call_per_step(hf_engine):
    calls = []

    class Counting:
        name = "counting"

        def generate(self, convs, params):
            calls.append(len(convs))
            return hf_engine.generate(convs, params)

    async def chain(gen):
        for step in range(3):
            await gen(PROMPTS[0], GenParams(max_tokens=4, temperature=0.0, seed=step))
        return True

    async def main():
        batcher = RoundBatcher(Counting(), 4)

        async def one():
            try:
                return await chain(batcher.agenerate)
            finally:
                batcher.chain_done()

        return await asyncio.gather(*(one() for _ in range(4)))

    assert asyncio.run(main()) == [True] * 4
    assert calls == [4, 4, 4]  # three steps, each one batch of all four rows


def test_chains_mode_needs_continuous_batching(hf_engine):
    with pytest.raises(UserError, match="revise.mode=chains needs an engine with continuous batching"):
        run_chains(hf_engine, [lambda g: g(PROMPTS[0], GenParams(max_tokens=2))], mode="chains")


def test_missing_model_folder_is_a_user_error():
    with pytest.raises(UserError, match="does not exist"):
        make_engine(kind="hf", model="./no/such/model")


def test_vllm_missing_says_how_to_install(monkeypatch):
    from cai_pipeline.engines.vllm import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(UserError, match=r"pip install 'cai-pipeline\[cpu\]'"):
        import_vllm()


def test_auto_picks_vllm_where_installed(monkeypatch):
    import importlib.util

    assert resolve_kind("hf") == "hf"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert resolve_kind("auto") == "hf"
