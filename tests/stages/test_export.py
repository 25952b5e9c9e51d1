"""Export on hand-built rows: which side is chosen, the train/test split by prompt_id, and when export (and any
run-scope stage) runs again, is skipped, or is refused."""

from __future__ import annotations

import pytest

from cai_pipeline.config import load_config
from cai_pipeline.errors import UserError
from cai_pipeline.pipeline import run_whole
from cai_pipeline.stages.base import RunContext, Stage
from cai_pipeline.stages.export import held_out_prompts, preference_row, preference_rows, sft_rows
from cai_pipeline.store import RunStore

PROMPT = [{"role": "user", "content": "q"}]


def judged(p_a, origin="sampled", **extra):
    return {"pair_id": "x", "prompt_id": "p", "prompt": PROMPT, "a": "A text", "b": "B text", "origin": origin,
            "p_a": p_a, "verdicts": [{"principle_id": "u"}, {"principle_id": "v"}], "judge_principle_ids": ["u", "v"],
            "revision_principle_ids": [], "a_truncated": True, "b_truncated": False, **extra}


def test_the_judges_side_is_chosen_and_p_chosen_is_its_probability():
    row = preference_row(judged(0.8))
    assert row["chosen"] == [{"role": "assistant", "content": "A text"}] and row["p_chosen"] == 0.8
    row = preference_row(judged(0.3))
    assert row["chosen"][0]["content"] == "B text" and row["rejected"][0]["content"] == "A text"
    assert row["p_chosen"] == pytest.approx(0.7)
    assert row["judge_principle_ids"] == ["u", "v"] and row["revision_principle_ids"] == []
    assert (row["chosen_truncated"], row["rejected_truncated"]) == (False, True)  # the flags follow their texts


def test_an_unjudged_revision_pair_takes_the_revision_with_no_label():
    row = preference_row({**judged(None, "revision", judge_principle_ids=[]), "revision_principle_ids": ["w"]})
    assert row["chosen"][0]["content"] == "A text" and row["p_chosen"] is None
    assert row["revision_principle_ids"] == ["w"] and row["judge_principle_ids"] == []
    pairs = [judged(None, "revision"), judged(None, "sampled")]
    counts = {}
    rows, source = preference_rows([], [{k: v for k, v in p.items() if k != "p_a"} for p in pairs], counts)
    assert source == "pairs" and [r["origin"] for r in rows] == ["revision"]
    assert counts == {"sampled_pairs_without_judge": 1}


def test_the_split_is_by_prompt_id_and_stable():
    ids = {f"prompt-{i}" for i in range(50)}
    held = held_out_prompts(ids, 0.1)
    assert len(held) == 5 and held <= ids
    assert held_out_prompts(ids, 0.1) == held and len(held_out_prompts(ids | {"new"}, 0.1) & held) >= 4
    assert held_out_prompts({"a", "b"}, 0.1) and len(held_out_prompts({"a", "b"}, 0.1)) == 1  # at least one
    assert held_out_prompts({"only"}, 0.5) == set() and held_out_prompts(ids, 0.0) == set()
    # each prompt's rows land together: the split is a set of prompt ids, not of rows
    revised = [{"prompt_id": pid, "sample_idx": k, "prompt": PROMPT, "final": "f", "rounds": [], "final_truncated": False}
               for pid in sorted(ids) for k in range(2)]
    sft = sft_rows(revised)
    assert {r["prompt_id"] for r in sft if r["prompt_id"] in held} == held


def test_a_growing_prompt_set_keeps_earlier_test_prompts_mostly_in_test():
    small = {f"p{i}" for i in range(100)}
    big = small | {f"q{i}" for i in range(100)}
    assert len(held_out_prompts(small, 0.1) & held_out_prompts(big, 0.1)) >= 5


@pytest.fixture
def ctx(tmp_path):
    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}"])
    store = RunStore(cfg.out_dir)
    store.root.mkdir()
    return RunContext(cfg, store, assets=None, manifest={"stages": {}})


def fake_stage(name, on_change="redo", identity=None):
    """A run-scope stage like export or train: writes one file, counts its runs."""
    calls = []

    def run(ctx):
        calls.append(1)
        (ctx.store.root / f"{name}.out").write_text("x")
        return {"rows": len(calls)}

    stage = Stage(name, (), None, None, ("export",), run, "run", identity=identity or (lambda c: {"n": 1}),
                  outputs=lambda c: [c.store.root / f"{name}.out"], on_change=on_change)
    return stage, calls


def test_a_run_stage_is_skipped_when_nothing_changed(ctx):
    stage, calls = fake_stage("derived")
    assert run_whole(stage, ctx) == "ran" and run_whole(stage, ctx) == "already done" and len(calls) == 1
    (ctx.store.root / "derived.out").unlink()  # its outputs gone: it runs again
    assert run_whole(stage, ctx) == "ran" and len(calls) == 2


def test_a_changed_cheap_stage_is_redone_and_a_costly_one_refused(ctx):
    inputs = {"n": 1}
    cheap, cheap_calls = fake_stage("cheap", identity=lambda c: dict(inputs))
    costly, costly_calls = fake_stage("costly", on_change="refuse", identity=lambda c: dict(inputs))
    run_whole(cheap, ctx), run_whole(costly, ctx)
    inputs["n"] = 2
    assert run_whole(cheap, ctx) == "ran" and len(cheap_calls) == 2
    with pytest.raises(UserError, match=r"costly: .*other settings or inputs \(inputs.n\).*--restart"):
        run_whole(costly, ctx)
    assert len(costly_calls) == 1
    ctx.redo = True  # `cai train --restart`
    assert run_whole(costly, ctx) == "ran" and len(costly_calls) == 2
    ctx.redo = False
    assert run_whole(costly, ctx) == "already done"
    ctx.cfg.export.test_fraction = 0.5  # a setting of its own changed
    with pytest.raises(UserError, match="settings.export.test_fraction"):
        run_whole(costly, ctx)
