"""The pairs stage: which pairs the judge sees, their stable ids, and what is dropped (identical texts)."""

from __future__ import annotations

import pytest

from cai_pipeline.config import load_config
from cai_pipeline.records import PairRecord
from cai_pipeline.stages import pairs
from cai_pipeline.stages.base import StageContext
from tests.conftest import later_wins


def ctx_for(seed=0, *overrides):
    return StageContext(seed=seed, shard=0, cfg=load_config(None, later_wins("out_dir=x", *overrides)))


def samples(prompt_id: str, n: int, texts=None) -> list[dict]:
    texts = texts or [f"{prompt_id} answer {i}" for i in range(n)]
    return [{"prompt_id": prompt_id, "sample_idx": i, "prompt": [{"role": "user", "content": f"ask {prompt_id}"}],
             "response": texts[i], "finish_reason": "stop", "n_tokens": 3} for i in range(n)]


def revised(prompt_id: str, idx: int, initial: str, final: str) -> dict:
    rounds = [{"principle_id": "violence", "critique": "c", "revision": final, "cleaned": False, "kept_previous": None,
               "truncated": False},
              {"principle_id": "privacy", "critique": "c", "revision": "", "cleaned": False, "kept_previous": "empty",
               "truncated": False}]
    return {"prompt_id": prompt_id, "sample_idx": idx, "prompt": [{"role": "user", "content": f"ask {prompt_id}"}],
            "initial": initial, "initial_truncated": True, "rounds": rounds, "final": final, "final_truncated": False}


def index_pairs(rows):
    return [(r["prompt_id"], r["a_idx"], r["b_idx"]) for r in rows]


@pytest.mark.parametrize("n,expected", [(2, 1), (3, 3), (4, 6)])
def test_all_pairs_for_up_to_four_samples(n, expected):
    out = pairs.run({"sample": samples("p", n)}, None, ctx_for())
    assert len(out.rows) == expected == n * (n - 1) // 2
    assert all(r["a_idx"] < r["b_idx"] and r["origin"] == "sampled" for r in out.rows)
    assert out.counts["sampled"] == expected and not out.rejects
    for row in out.rows:
        PairRecord.model_validate(row)


def test_more_than_four_samples_gives_n_pairs_unless_configured():
    out = pairs.run({"sample": samples("p", 6)}, None, ctx_for())
    assert len(out.rows) == 6  # of 15 possible
    capped = pairs.run({"sample": samples("p", 6)}, None, ctx_for(0, "pairs.max_sampled_per_prompt=2"))
    assert len(capped.rows) == 2
    small = pairs.run({"sample": samples("p", 4)}, None, ctx_for(0, "pairs.max_sampled_per_prompt=2"))
    assert len(small.rows) == 2  # the cap applies to n ≤ 4 too


def test_the_drawn_subset_depends_on_the_prompt_not_the_shard():
    alone = pairs.run({"sample": samples("p", 6)}, None, ctx_for(1))
    with_others = pairs.run({"sample": samples("q", 6) + samples("p", 6)}, None, ctx_for(1))
    assert index_pairs(alone.rows) == [x for x in index_pairs(with_others.rows) if x[0] == "p"]
    other_seed = pairs.run({"sample": samples("p", 6)}, None, ctx_for(2))
    assert len(other_seed.rows) == 6


def test_pair_ids_are_stable_and_distinct():
    first = pairs.run({"sample": samples("p", 4)}, None, ctx_for())
    again = pairs.run({"sample": list(reversed(samples("p", 4)))}, None, ctx_for(seed=9))
    assert sorted(r["pair_id"] for r in first.rows) == sorted(r["pair_id"] for r in again.rows)
    assert len({r["pair_id"] for r in first.rows}) == 6
    # The id names the prompt, the origin and the two samples: nothing else.
    assert pairs.pair_id("p", "sampled", 0, 1) == pairs.pair_id("p", "sampled", 0, 1)
    ids = {pairs.pair_id("p", "sampled", 0, 1), pairs.pair_id("p", "revision", 0, 1),
           pairs.pair_id("p", "sampled", 1, 0), pairs.pair_id("q", "sampled", 0, 1)}
    assert len(ids) == 4


def test_identical_texts_are_rejected_with_a_reason():
    texts = ["Same answer.", "Same answer.  ", "Different."]
    out = pairs.run({"sample": samples("p", 3, texts)}, None, ctx_for())
    assert index_pairs(out.rows) == [("p", 0, 2), ("p", 1, 2)]
    assert [r["reason"] for r in out.rejects] == ["identical"]
    assert out.rejects[0]["stage"] == "pairs" and out.rejects[0]["key"] == pairs.pair_id("p", "sampled", 0, 1)
    assert '"Same answer."' in out.rejects[0]["row"]  # the pair itself is kept in the reject


def test_revision_pairs_put_the_revision_first_and_name_its_principles():
    sample = samples("p", 2)
    revise = [revised("p", 0, "initial text", "revised text"), revised("p", 1, "unchanged", "unchanged")]
    out = pairs.run({"sample": sample, "revise": revise}, None, ctx_for())
    rev = [r for r in out.rows if r["origin"] == "revision"]
    assert len(rev) == 1 and rev[0]["a"] == "revised text" and rev[0]["b"] == "initial text"
    assert rev[0]["a_idx"] == rev[0]["b_idx"] == 0
    assert rev[0]["revision_principle_ids"] == ["violence"]  # the round that kept the previous text applied nothing
    assert (rev[0]["a_truncated"], rev[0]["b_truncated"]) == (False, True)  # final, then the (cut) initial
    assert [r["reason"] for r in out.rejects] == ["identical"]  # sample 1: the revision changed nothing
    assert dict(out.counts) == {"sampled": 1, "revision": 1}


def test_sampled_pairs_can_be_turned_off():
    out = pairs.run({"sample": samples("p", 2), "revise": [revised("p", 0, "a", "b")]}, None,
                    ctx_for(0, "pairs.sampled=false"))
    assert [r["origin"] for r in out.rows] == ["revision"]
