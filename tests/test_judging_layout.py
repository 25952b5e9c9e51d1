"""The judge's two prompt layouts: shared_prefix puts the conversation and both responses before the question,
so the k principles of one pair and order share everything up to it; the layout changes the prompt, never the
guarantees (exact symmetry, the same verdict structure)."""

from __future__ import annotations

import pytest

from cai_pipeline import judging as judge
from cai_pipeline.engines.chat import prompt_ids
from cai_pipeline.templates import TemplateSet
from tests.test_judging import CONSTITUTION, PAIRS, Table, pair, principle, swapped

THREE = [principle("p1"), principle("p2"), principle("p3")]


def job(layout_pairs=None):
    jobs, _ = judge.plan(layout_pairs or [pair("first reply", "second reply")], THREE, 3, 0, both_orders=True)
    return jobs[0]


def test_shared_prefix_conversations_differ_only_after_both_responses():
    convs = judge.conversations(job(), TemplateSet(), False, "shared_prefix")
    assert len(convs) == 3 * 2  # principle-major, both orders of each
    for order in (0, 1):
        texts = [c[0]["content"] for c in convs[order::2]]
        heads = {t[: t.index("Question ")] for t in texts}
        assert len(heads) == 1  # the same prefix for every principle of this order...
        head = heads.pop()
        assert "first reply" in head and "second reply" in head  # ...and it holds both responses
    question_first = judge.conversations(job(), TemplateSet(), False, "question_first")[0][0]["content"]
    assert question_first.index("Question ") < question_first.index("(A)")


def test_the_layout_changes_the_prompt_not_the_verdicts_structure():
    table = {(p.id, text): 0.8 if text == x else 0.3 for p in THREE for x in ("good", "bad")
             for text in ("good", "bad")}
    pairs = [pair("good", "bad"), pair("bad", "good")]
    by_layout = {layout: judge.judge_pairs(Table(table), pairs, THREE, k=3, layout=layout)
                 for layout in ("question_first", "shared_prefix")}
    # A judge that answers from the question and the first response gives the same numbers in both layouts.
    assert by_layout["question_first"] == by_layout["shared_prefix"]
    first, second = by_layout["shared_prefix"]
    assert first["p_a"] + second["p_a"] == 1.0 and {v["principle_id"] for v in first["verdicts"]} == {"p1", "p2", "p3"}


def test_shared_prefix_templates_render_in_reasoning_mode_too():
    convs = judge.conversations(job(), TemplateSet(), True, "shared_prefix")
    text = convs[0][0]["content"]
    assert text.index("(B)") < text.index("Question ") and "step by step" in text
    assert convs[0][1]["content"] == judge.REASONING_START


@pytest.mark.model
def test_symmetry_is_exact_in_the_shared_prefix_layout_on_the_real_model(engine):
    principles = CONSTITUTION.principles[:3]  # three principles of one pair share a prefix (and the cache)
    forward = judge.judge_pairs(engine, PAIRS, principles, k=3, layout="shared_prefix")
    backward = judge.judge_pairs(engine, swapped(PAIRS), principles, k=3, layout="shared_prefix")
    for f, b in zip(forward, backward):
        assert f["error"] is None and f["p_a"] + b["p_a"] == 1.0
    # What the engine sees: the prompts of one order share token ids through both responses.
    first_job = judge.plan(PAIRS[:1], principles, 3, 0, both_orders=True)[0][0]
    tokens = [prompt_ids(engine.tokenizer, c) for c in judge.conversations(first_job, TemplateSet(), False,
                                                                            "shared_prefix")]
    common = min(next(i for i, (a, b) in enumerate(zip(tokens[0], t)) if a != b) for t in tokens[2::2])
    shared = engine.tokenizer.decode(tokens[0][:common])
    assert PAIRS[0]["a"] in shared and PAIRS[0]["b"] in shared
