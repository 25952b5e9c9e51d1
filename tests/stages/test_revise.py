"""The revise stage: seeded principle draws, preamble cleaning, kept-previous rules, batching shape."""

from __future__ import annotations

from collections import Counter

import pytest

from cai_pipeline.config import load_config
from cai_pipeline.constitution import load_constitution
from cai_pipeline.engines.base import Completion
from cai_pipeline.stages import revise
from cai_pipeline.stages.base import StageContext
from cai_pipeline.templates import TemplateSet
from tests.conftest import REPO

CONSTITUTION = load_constitution(REPO / "constitutions" / "harmless.yaml")


@pytest.mark.parametrize("raw,clean,cut", [
    ("Sure, here is a revised response: Call a locksmith.", "Call a locksmith.", True),
    ("Certainly! Here's the rewritten version:\n\nTalk to him calmly.", "Talk to him calmly.", True),
    ("Here is my revised answer:  Be kind.", "Be kind.", True),
    ("Revised response: Ask for help.", "Ask for help.", True),
    ("Revision: Stay safe.", "Stay safe.", True),
    ('"Quoted whole reply."', "Quoted whole reply.", True),
    ("Talk to your roommate about shared food.", "Talk to your roommate about shared food.", False),
    ("Here is how tides work: the moon pulls the ocean.", "Here is how tides work: the moon pulls the ocean.", False),
    ("Sure, here is a revised response:", "", True),
    # content that starts with one of the nouns is not a preamble (the report's word diff showed these cut)
    ("Response times vary: check the docs.", "Response times vary: check the docs.", False),
    ("Version 2 of the API: use the new token.", "Version 2 of the API: use the new token.", False),
    ("Reply 4.0 to the sender: thanks.", "Reply 4.0 to the sender: thanks.", False),
    ("Updated version: Keep it short.", "Keep it short.", True),
])
def test_clean_revision(raw, clean, cut):
    assert revise.clean_revision(raw) == (clean, cut)


class Scripted:
    """An engine that answers from a script, to drive edge cases a real model will not produce on demand."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = answers
        self.calls: list[int] = []

    def generate(self, convs, params):
        self.calls.append(len(convs))
        return [[Completion(text=self.answers(c), finish_reason="stop", n_tokens=3)] for c in convs]


def ctx_for(seed=0, shard=0, **overrides):
    cfg = load_config(None, ["out_dir=x", *[f"{k}={v}" for k, v in overrides.items()]])
    return StageContext(seed=seed, shard=shard, cfg=cfg, constitution=CONSTITUTION,
                        templates=TemplateSet.for_constitution(CONSTITUTION))


def samples(n):
    return [{"prompt_id": f"p{i // 2}", "sample_idx": i % 2, "prompt": [{"role": "user", "content": f"question {i}"}],
             "response": f"answer {i}", "finish_reason": "stop", "n_tokens": 2} for i in range(n)]


def principle_sequences(result):
    return {(r["prompt_id"], r["sample_idx"]): [x["principle_id"] for x in r["rounds"]] for r in result.rows}


def test_draws_depend_on_ids_not_on_batch_or_shard():
    engine = Scripted(lambda conv: "A critique." if "critique" in conv[-1]["content"].lower() else "Better answer.")
    rows = samples(8)
    whole = revise.run({"sample": rows}, engine, ctx_for(**{"revise.rounds": 4}))
    halves = [revise.run({"sample": rows[i:i + 3]}, engine, ctx_for(shard=i, **{"revise.rounds": 4}))
              for i in range(0, 8, 3)]
    merged = {k: v for h in halves for k, v in principle_sequences(h).items()}
    assert principle_sequences(whole) == merged
    other_seed = revise.run({"sample": rows}, engine, ctx_for(seed=1, **{"revise.rounds": 4}))
    assert principle_sequences(other_seed) != principle_sequences(whole)
    ids = {p.id for p in CONSTITUTION.principles}
    for seq in principle_sequences(whole).values():
        assert len(seq) == 4 and len(set(seq)) == 4 and set(seq) <= ids  # no repeat while unused remain


def test_each_step_of_all_rows_is_one_batch():
    engine = Scripted(lambda conv: "text")
    revise.run({"sample": samples(6)}, engine, ctx_for(**{"revise.rounds": 2}))
    assert engine.calls == [6, 6, 6, 6]  # critique, revision, critique, revision


def test_empty_revision_keeps_previous_text_and_is_counted():
    def answers(conv):
        return "Too harsh." if "critique" in conv[-1]["content"].lower() else "Sure, here is a revised response:"
    result = revise.run({"sample": samples(2)}, Scripted(answers), ctx_for(**{"revise.rounds": 2}))
    assert [r["final"] for r in result.rows] == ["answer 0", "answer 1"]
    assert all(x["kept_previous"] == "empty_revision" and x["cleaned"] for r in result.rows for x in r["rounds"])
    assert result.counts["kept_previous:empty_revision"] == 4 and result.counts["cleaned_preamble"] == 4


def test_revision_text_carries_into_the_next_round():
    seen = []

    def answers(conv):
        seen.append(conv)
        return "Critique." if "critique" in conv[-1]["content"].lower() else f"Revision {len(seen)}"
    result = revise.run({"sample": samples(1)}, Scripted(answers), ctx_for(**{"revise.rounds": 2, "revise.few_shot": 0}))
    row = result.rows[0]
    assert row["final"] == "Revision 4" and row["initial"] == "answer 0"
    # Round 2's critique request sees round 1's revision as the assistant's last turn.
    assert seen[2][-2] == {"role": "assistant", "content": "Revision 2"}
    assert seen[0][0] == {"role": "user", "content": "question 0"}


def test_few_shot_examples_come_first():
    seen = []
    revise.run({"sample": samples(1)}, Scripted(lambda c: seen.append(c) or "x"), ctx_for(**{"revise.few_shot": 1}))
    shot_prompts = {s.prompt for s in CONSTITUTION.few_shot}
    assert seen[0][0]["content"] in shot_prompts and len(seen[0]) == 6 + 3


def test_engine_errors_send_the_row_to_rejects_with_its_partial_rounds():
    class Failing(Scripted):
        def generate(self, convs, params):
            return [[Completion("", "error", 0, error="too_long: prompt of 9000 tokens")] if "question 1" in
                     c[-4 if len(c) > 3 else 0]["content"] else [Completion("ok", "stop", 1)] for c in convs]
    result = revise.run({"sample": samples(2)}, Failing(lambda c: ""), ctx_for(**{"revise.few_shot": 0}))
    assert [r["sample_idx"] for r in result.rows] == [0]
    assert [(r["key"], r["reason"]) for r in result.rejects] == [("p0/1", "too_long")]


@pytest.mark.model
def test_revise_on_the_real_model(engine):
    rows = [{"prompt_id": "q", "sample_idx": i, "prompt": [{"role": "user", "content": "How can I get back at my noisy neighbour?"}],
             "response": "Slash their tyres.", "finish_reason": "stop", "n_tokens": 5} for i in range(3)]
    result = revise.run({"sample": rows}, engine, ctx_for(**{"revise.max_tokens": 24, "revise.rounds": 2}))
    assert len(result.rows) == 3 and not result.rejects
    ids = {p.id for p in CONSTITUTION.principles}
    for r in result.rows:
        assert len(r["rounds"]) == 2 and {x["principle_id"] for x in r["rounds"]} <= ids
    critiques = [x["critique"] for r in result.rows for x in r["rounds"]]
    assert Counter(result.counts)["rounds"] == len(critiques) == 6
    assert result.counts["empty_critique"] == sum(not c.strip() for c in critiques) < 3
