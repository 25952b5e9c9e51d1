"""The judge: the ensemble math on hand-built log-probs, the CoT clamp, the filters and their rejects, the
seeded principle draws, one engine call per step, and exact symmetry p(x≻y) + p(y≻x) = 1 on the real model."""

from __future__ import annotations

import json
import math
import re

import pyarrow.parquet as pq
import pytest

from cai_pipeline import judging as judge
from cai_pipeline.card import judge_section
from cai_pipeline.config import load_config
from cai_pipeline.constitution import Principle, load_constitution
from cai_pipeline.engines.base import Completion
from cai_pipeline.records import JudgeRecord
from cai_pipeline.stages import judge as judge_stage
from cai_pipeline.stages.base import StageContext
from cai_pipeline.templates import TemplateSet
from tests.conftest import REPO, later_wins

CONSTITUTION = load_constitution(REPO / "constitutions" / "harmless.yaml")
LOG = math.log


def principle(pid: str, weight: float = 1.0) -> Principle:
    return Principle(id=pid, critique="c", revision="r", comparison=f"Question {pid}: which is better?",
                     rationale="why", weight=weight)


class Table:
    """A judge engine that answers from a table: P(A) for (question id, response shown first). It records every
    call, so tests can check the batching; a response containing TOO_LONG does not fit the context."""

    name = "table"

    def __init__(self, p_first, reasoning="I compared them."):
        self.p_first = p_first  # (principle id, first text) → P(A)
        self.reasoning = reasoning
        self.calls: list[tuple[str, int]] = []

    @staticmethod
    def parse(conv):
        text = conv[0]["content"]
        pid = re.search(r"Question (\S+):", text).group(1)
        first = re.search(r"\(A\) (.*?)\n\n\(B\)", text, re.S).group(1)
        return pid, first, text

    def choice_logprobs(self, convs, choices):
        self.calls.append(("choice_logprobs", len(convs)))
        out = []
        for conv in convs:
            pid, first, text = self.parse(conv)
            p = self.p_first[(pid, first)]
            if "TOO_LONG" in text:
                out.append({})
            elif "SERVER_DOWN" in text:  # a server engine's failure string
                out.append("server_error: 503 Service Unavailable (after 6 tries)")
            else:
                out.append({"A": LOG(p) - 0.7, "B": LOG(1 - p) - 0.7})
        return out

    def generate(self, convs, params):
        self.calls.append(("generate", len(convs)))
        out = []
        for conv in convs:
            _, first, _ = self.parse(conv)
            if "BROKEN" in first:
                out.append([Completion("", "error", 0, error="server_error: 500 from the judge server")])
            else:
                out.append([Completion(f" {self.reasoning} ({first})", "stop", 5)])
        return out


def pair(a, b, prompt="Is it safe?", **extra):
    return {"prompt": prompt, "a": a, "b": b, **extra}


# ---------------------------------------------------------------------------------------------------------
# The math, with the numbers written out


def test_choice_probability_normalises_over_a_and_b():
    """P(A) = e^la / (e^la + e^lb). la = log 0.6, lb = log 0.2 (0.2 of the mass is elsewhere): 0.6 / 0.8 = 0.75."""
    assert judge.choice_probability({"A": LOG(0.6), "B": LOG(0.2)}) == pytest.approx(0.75, abs=1e-15)
    assert judge.choice_probability({"A": LOG(0.2), "B": LOG(0.6)}) == pytest.approx(0.25, abs=1e-15)
    assert judge.choice_probability({"A": -3.0, "B": -3.0}) == 0.5
    assert judge.choice_probability({"A": -math.inf, "B": -math.inf}) == 0.5
    assert judge.choice_probability({"A": 0.0, "B": -math.inf}) == 1.0
    assert judge.choice_probability({"A": -2000.0, "B": 0.0}) == 0.0  # no overflow far out in the tail


def test_order_average_and_weighted_ensemble():
    """Principle u (weight 1): P(A | x first) = 0.8; with y first P(A) = 0.3, so P(B | x second) = 0.7:
         p_u = ½(0.8 + 0.7) = 0.75.
    Principle v (weight 3): P(A | x first) = 0.4; with y first P(A) = 0.5, so P(B | x second) = 0.5:
         p_v = ½(0.4 + 0.5) = 0.45.
    Ensemble: (1·0.75 + 3·0.45) / (1 + 3) = (0.75 + 1.35) / 4 = 0.525."""
    assert judge.order_average(0.8, 0.7) == pytest.approx(0.75)
    assert judge.weighted_mean([0.75, 0.45], [1, 3]) == pytest.approx(0.525)
    engine = Table({("u", "x"): 0.8, ("u", "y"): 0.3, ("v", "x"): 0.4, ("v", "y"): 0.5})
    [rec] = judge.judge_pairs(engine, [pair("x", "y")], [principle("u", 1), principle("v", 3)])
    verdicts = {v["principle_id"]: v for v in rec["verdicts"]}
    assert verdicts["u"]["p_a_first"] == pytest.approx(0.8) and verdicts["u"]["p_a_second"] == pytest.approx(0.7)
    assert verdicts["v"]["p_a_first"] == pytest.approx(0.4) and verdicts["v"]["p_a_second"] == pytest.approx(0.5)
    assert rec["p_a"] == pytest.approx(0.525) and rec["error"] is None
    # u picks x in both orders; v picks (B) = y with x first, and has no preference with y first: consistent.
    assert rec["consistent"] is True


def test_the_swapped_pair_is_the_mirror_image():
    """(y, x) from the same numbers: p_a_first = 1 − 0.7 = 0.3, p_a_second = 1 − 0.8 = 0.2 for u; p_a = 0.475."""
    engine = Table({("u", "x"): 0.8, ("u", "y"): 0.3, ("v", "x"): 0.4, ("v", "y"): 0.5})
    fwd, back = judge.judge_pairs(engine, [pair("x", "y"), pair("y", "x")], [principle("u", 1), principle("v", 3)])
    assert back["p_a"] == pytest.approx(0.475) and fwd["p_a"] + back["p_a"] == 1.0
    u = next(v for v in back["verdicts"] if v["principle_id"] == "u")
    assert u["p_a_first"] == pytest.approx(0.3) and u["p_a_second"] == pytest.approx(0.2)
    assert engine.calls == [("choice_logprobs", 4)]  # the pair and its mirror are scored once: 2 principles × 2 orders


def test_order_inconsistency():
    """P(A | x first) = 0.9 and P(A | y first) = 0.6: (A) wins in both orders, whoever is shown there.
    P(B | x second) = 0.4, p = ½(0.9 + 0.4) = 0.65, and the verdict is order-inconsistent."""
    assert judge.picks_same_position(0.9, 0.4) and judge.picks_same_position(0.2, 0.7)
    assert not judge.picks_same_position(0.9, 0.6) and not judge.picks_same_position(0.5, 0.1)
    [rec] = judge.judge_pairs(Table({("u", "x"): 0.9, ("u", "y"): 0.6}), [pair("x", "y")], [principle("u")])
    assert rec["p_a"] == pytest.approx(0.65) and rec["consistent"] is False


def test_the_clamp_applies_to_each_order_before_averaging(monkeypatch):
    """The clamp's inputs are the per-order probabilities from the log-probs, its outputs what the verdict keeps:
    P(A | x first) = 0.9 → 0.6 and P(B | x second) = 1 − 0.55 = 0.45 → 0.45, so p = 0.525. Clamping the average
    instead would give clamp(0.675) = 0.6; not clamping at all, 0.675."""
    seen = []
    real = judge.clamp

    def spy(p, lo, hi):
        seen.append((round(p, 9), round(real(p, lo, hi), 9), (lo, hi)))
        return real(p, lo, hi)

    monkeypatch.setattr(judge, "clamp", spy)
    [cot] = judge.judge_pairs(Table({("u", "x"): 0.9, ("u", "y"): 0.55}), [pair("x", "y")], [principle("u")],
                              reasoning=True)
    assert seen == [(0.9, 0.6, (0.4, 0.6)), (0.45, 0.45, (0.4, 0.6))]
    assert cot["verdicts"][0]["p_a_first"] == 0.6 and cot["verdicts"][0]["p_a_second"] == pytest.approx(0.45)
    assert cot["p_a"] == pytest.approx(0.525)
    seen.clear()
    [plain] = judge.judge_pairs(Table({("u", "x"): 0.9, ("u", "y"): 0.55}), [pair("x", "y")], [principle("u")])
    assert seen == [] and plain["p_a"] == pytest.approx(0.675)  # without reasoning nothing is clamped


def test_chain_of_thought_clamps_to_the_papers_range():
    """P(A | x first) = 0.9 → 0.6; P(B | x second) = 1 − 0.2 = 0.8 → 0.6; p = 0.6 (0.85 without the clamp)."""
    assert judge.clamp(0.9, 0.4, 0.6) == 0.6 and judge.clamp(0.1, 0.4, 0.6) == 0.4 and judge.clamp(0.55, 0.4, 0.6) == 0.55
    table = {("u", "x"): 0.9, ("u", "y"): 0.2}
    [plain] = judge.judge_pairs(Table(table), [pair("x", "y")], [principle("u")])
    assert plain["p_a"] == pytest.approx(0.85)
    engine = Table(table)
    [cot] = judge.judge_pairs(engine, [pair("x", "y")], [principle("u")], reasoning=True)
    assert cot["p_a"] == 0.6 and cot["verdicts"][0]["p_a_first"] == 0.6 and cot["verdicts"][0]["p_a_second"] == 0.6
    assert cot["verdicts"][0]["reasoning_first"] == "I compared them. (x)"
    assert cot["verdicts"][0]["reasoning_second"] == "I compared them. (y)"
    assert engine.calls == [("generate", 2), ("choice_logprobs", 2)]  # one call per step
    [mirror] = judge.judge_pairs(Table(table), [pair("y", "x")], [principle("u")], reasoning=True)
    assert mirror["verdicts"][0]["reasoning_first"] == "I compared them. (y)" and mirror["p_a"] == pytest.approx(0.4)


def test_the_scored_conversation_carries_the_reasoning_and_the_prefix():
    seen = []

    class Spy(Table):
        def choice_logprobs(self, convs, choices):
            seen.extend(convs)
            return super().choice_logprobs(convs, choices)

    judge.judge_pairs(Spy({("u", "x"): 0.7, ("u", "y"): 0.4}), [pair("x", "y")], [principle("u")], reasoning=True)
    opening = seen[0][-1]
    assert opening["role"] == "assistant"
    assert opening["content"].startswith(judge.REASONING_START) and opening["content"].endswith("The answer is: (")
    assert "step by step" in seen[0][0]["content"]  # the judge_reasoning template


def test_failures_are_records_with_a_reason_never_numbers():
    engine = Table({("u", "x"): 0.7, ("u", "TOO_LONG y"): 0.4, ("u", "y"): 0.4})
    ok, long = judge.judge_pairs(engine, [pair("x", "y"), pair("x", "TOO_LONG y")], [principle("u")])
    assert ok["error"] is None and long["error"].startswith("too_long:") and "p_a" not in long
    broken = Table({("u", "x"): 0.7, ("u", "BROKEN"): 0.4})
    [rec] = judge.judge_pairs(broken, [pair("x", "BROKEN")], [principle("u")], reasoning=True)
    assert rec["error"].startswith("server_error:") and "verdicts" not in rec
    # A failed scoring call keeps its own reason: a server outage is not reported as a too-long prompt.
    down = Table({("u", "x"): 0.7, ("u", "SERVER_DOWN y"): 0.4, ("u", "y"): 0.4})
    [rec] = judge.judge_pairs(down, [pair("x", "SERVER_DOWN y")], [principle("u")])
    assert rec["error"] == "server_error: 503 Service Unavailable (after 6 tries)" and "p_a" not in rec


# ---------------------------------------------------------------------------------------------------------
# Principle draws and batching


def test_principle_draws_are_seeded_by_the_pair_and_shared_by_both_orientations():
    many = CONSTITUTION.principles
    pairs = [pair(f"answer {i}", f"other {i}", prompt=f"prompt {i}") for i in range(12)]
    first = judge.plan(pairs, many, 2, 0, True)
    again = judge.plan(list(reversed(pairs)), many, 2, 0, True)
    swapped = judge.plan([pair(p["b"], p["a"], prompt=p["prompt"]) for p in pairs], many, 2, 0, True)
    draws = {j.key: [p.id for p in j.principles] for j in first[0]}
    assert draws == {j.key: [p.id for p in j.principles] for j in again[0]}
    assert draws == {j.key: [p.id for p in j.principles] for j in swapped[0]}
    assert all(len(set(d)) == 2 for d in draws.values())
    other_seed = judge.plan(pairs, many, 2, 1, True)
    assert draws != {j.key: [p.id for p in j.principles] for j in other_seed[0]}
    one = judge.plan(pairs[:1], [many[3]], 2, 0, True)[0][0]
    assert [p.id for p in one.principles] == [many[3].id]  # one principle given: that one


def test_one_choice_logprobs_call_for_the_whole_batch_and_order_does_not_matter():
    p = {("u", t): 0.3 + 0.05 * i for i, t in enumerate("abcdef")} | {("v", t): 0.6 for t in "abcdef"}
    pairs = [pair("a", "b"), pair("c", "d"), pair("e", "f"), pair("b", "a")]
    engine = Table(p)
    recs = judge.judge_pairs(engine, pairs, [principle("u"), principle("v")])
    assert engine.calls == [("choice_logprobs", 3 * 2 * 2)]  # 3 distinct pairs × 2 principles × 2 orders
    assert recs[0]["p_a"] + recs[3]["p_a"] == 1.0
    shuffled = judge.judge_pairs(Table(p), [pairs[2], pairs[3], pairs[0], pairs[1]], [principle("u"), principle("v")])
    assert [r["p_a"] for r in shuffled] == [recs[2]["p_a"], recs[3]["p_a"], recs[0]["p_a"], recs[1]["p_a"]]


def test_single_order_mode_asks_each_pair_as_given():
    engine = Table({("u", "x"): 0.8, ("u", "y"): 0.3})
    fwd, back = judge.judge_pairs(engine, [pair("x", "y"), pair("y", "x")], [principle("u")], both_orders=False)
    assert fwd["p_a"] == pytest.approx(0.8) and back["p_a"] == pytest.approx(0.3)  # position bias shows: sum ≠ 1
    assert fwd["consistent"] is None and fwd["verdicts"][0]["p_a_second"] is None
    assert engine.calls == [("choice_logprobs", 2)]


# ---------------------------------------------------------------------------------------------------------
# The stage: filters, rejects, counts


def stage_pairs():
    def row(i, a, b, origin="sampled"):
        return {"pair_id": f"pair{i}", "prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"q{i}"}],
                "a": a, "b": b, "origin": origin, "a_idx": 0, "b_idx": 1, "a_truncated": False, "b_truncated": False,
                "revision_principle_ids": []}

    return [row(0, "strong", "weak"), row(1, "close", "closer"), row(2, "first", "second"),
            row(3, "same-ish", "alike"), row(4, "revised", "initial", "revision"), row(5, "x", "TOO_LONG")]


STAGE_TABLE = {
    "strong": 0.9, "weak": 0.2,        # p = ½(0.9 + 0.8) = 0.85, consistent: kept
    "close": 0.53, "closer": 0.49,     # p = ½(0.53 + 0.51) = 0.52 < 0.5 + 0.05: below_margin
    "first": 0.9, "second": 0.6,       # p = ½(0.9 + 0.4) = 0.65, (A) both times: inconsistent
    "same-ish": 0.5, "alike": 0.5,     # p = 0.5 exactly: tie
    "revised": 0.3, "initial": 0.6,    # p = ½(0.3 + 0.4) = 0.35: the judge prefers the initial response
    "x": 0.7, "TOO_LONG": 0.7,
}


def stage_ctx(*overrides):
    cfg = load_config(None, later_wins("out_dir=x", "judge.principles=1", *overrides))
    only = CONSTITUTION.model_copy(update={"principles": [principle("u")]})
    return StageContext(seed=0, shard=0, cfg=cfg, constitution=only, templates=TemplateSet())


def test_stage_filters_count_and_keep_rejects_with_reasons():
    engine = Table({("u", t): p for t, p in STAGE_TABLE.items()})
    out = judge_stage.run({"pairs": stage_pairs()}, engine, stage_ctx())
    assert [(r["pair_id"], round(r["p_a"], 6)) for r in out.rows] == [("pair0", 0.85), ("pair4", 0.35)]
    reasons = {r["key"]: r["reason"] for r in out.rejects}
    assert reasons == {"pair1": "below_margin", "pair2": "inconsistent", "pair3": "tie", "pair5": "too_long"}
    assert dict(out.counts) == {"scored": 5, "consistent": 4, "revision_pairs": 1, "revision_preferred": 0}
    rejected = json.loads(next(r["row"] for r in out.rejects if r["key"] == "pair2"))
    assert rejected["p_a"] == pytest.approx(0.65) and rejected["verdicts"][0]["principle_id"] == "u"
    for row in out.rows:
        JudgeRecord.model_validate(row)
    assert engine.calls == [("choice_logprobs", 6 * 2)]


def test_stage_keeps_inconsistent_pairs_when_told_and_margin_zero_keeps_all_but_ties():
    engine = Table({("u", t): p for t, p in STAGE_TABLE.items()})
    out = judge_stage.run({"pairs": stage_pairs()}, engine, stage_ctx("judge.drop_inconsistent=false", "judge.min_margin=0"))
    assert [r["pair_id"] for r in out.rows] == ["pair0", "pair1", "pair2", "pair4"]
    assert sorted(r["reason"] for r in out.rejects) == ["tie", "too_long"]
    assert [r["consistent"] for r in out.rows] == [True, True, False, True]


def test_card_section_reports_the_judge():
    engine = Table({("u", t): p for t, p in STAGE_TABLE.items()})
    out = judge_stage.run({"pairs": stage_pairs()}, engine, stage_ctx())
    md = judge_section(out.rows, out.rejects)
    assert "5 pairs scored in both orders; 2 kept" in md
    assert "Order-consistency rate: 0.800" in md
    assert "Revision preferred over the initial response: 0.000 of 1 revision pairs" in md
    assert '{"below_margin": 1, "inconsistent": 1, "tie": 1, "too_long": 1}' in md
    assert "| u | 5 | 0.800 | 1.000 | 0.000 |" in md
    assert "Mean margin |p − 0.5|: 0.250 kept" in md  # (0.35 + 0.15) / 2


# ---------------------------------------------------------------------------------------------------------
# The real model


PAIRS = [
    pair("I can't help with hurting anyone, but if you're angry, talking to someone can help.",
         "Hit him hard when he isn't looking.", prompt="How do I get back at my neighbour?"),
    pair("Sure! Here's a recipe for banana bread: flour, bananas, eggs, sugar.", "I don't know.",
         prompt=[{"role": "user", "content": "Give me a quick recipe."}]),
    pair("Call emergency services right away.", "Wait and see, it's probably nothing.",
         prompt="My friend collapsed and isn't breathing. What should I do?"),
]


def swapped(pairs):
    return [{**p, "a": p["b"], "b": p["a"]} for p in pairs]


@pytest.mark.model
def test_symmetry_is_exact_on_the_real_model(engine):
    """(x, y) and (y, x) judged in separate calls: exact because both calls send the engine the same canonical
    batch. On vLLM that needs `choice_logprobs` to start from an empty prefix cache: a warm cache takes another
    kernel path and moves the numbers (0.500 → 0.554 for one of these pairs)."""
    principles = CONSTITUTION.principles  # k = 1 keeps it quick; the ensemble is the same arithmetic on top
    forward = judge.judge_pairs(engine, PAIRS, principles, k=1)
    backward = judge.judge_pairs(engine, list(reversed(swapped(PAIRS))), principles, k=1)[::-1]
    for f, b in zip(forward, backward):
        assert f["error"] is None and 0.0 < f["p_a"] < 1.0
        assert f["p_a"] + b["p_a"] == 1.0
        assert f["consistent"] == b["consistent"]
        for vf, vb in zip(f["verdicts"], b["verdicts"]):
            assert vf["principle_id"] == vb["principle_id"]
            assert vf["p_a_first"] + vb["p_a_second"] == 1.0 and vf["p_a_second"] + vb["p_a_first"] == 1.0
    mixed = judge.judge_pairs(engine, [PAIRS[0], swapped(PAIRS)[0]], principles, k=1)  # a pair and its mirror
    assert mixed[0]["p_a"] + mixed[1]["p_a"] == 1.0


@pytest.mark.model
def test_chain_of_thought_on_the_real_model_stores_reasoning(engine):
    pairs = [PAIRS[0], swapped(PAIRS)[0]]
    recs = judge.judge_pairs(engine, pairs, CONSTITUTION.principles, k=1, reasoning=True, reasoning_max_tokens=8)
    for rec in recs:
        assert rec["error"] is None and 0.4 <= rec["p_a"] <= 0.6
        v = rec["verdicts"][0]
        # Greedy reasoning may be empty (the model can go straight to "The answer is"); it is stored either way.
        assert isinstance(v["reasoning_first"], str) and isinstance(v["reasoning_second"], str)
        assert 0.4 <= v["p_a_first"] <= 0.6 and 0.4 <= v["p_a_second"] <= 0.6
    assert recs[0]["p_a"] + recs[1]["p_a"] == 1.0
    assert recs[0]["verdicts"][0]["reasoning_first"] == recs[1]["verdicts"][0]["reasoning_second"]


@pytest.mark.model
def test_judge_stage_in_a_run_labels_the_preference_dataset(hf_engine, run_config):
    """Pairs written by hand, then `--stages judge,export` on the real model: judge shards that match the
    record schema, a preference dataset with soft labels, and the judge's section in the dataset card."""
    from cai_pipeline.pipeline import run_pipeline
    from cai_pipeline.records import PairRecord
    from cai_pipeline.store import RunStore

    cfg = run_config("stages=[judge,export]", "judge.min_margin=0", "judge.drop_inconsistent=false",
                     "judge.principles=1")
    rows = [{"pair_id": f"pair{i}", "prompt_id": f"p{i}", "prompt": judge.as_messages(p["prompt"]), "a": p["a"],
             "b": p["b"], "origin": origin, "a_idx": 0, "b_idx": 1 if origin == "sampled" else 0, "a_truncated": False,
             "b_truncated": False, "revision_principle_ids": []}
            for i, (p, origin) in enumerate(zip(PAIRS, ["sampled", "revision", "revision"]))]
    store = RunStore(cfg.out_dir)
    store.write_manifest({"package": "cai-pipeline", "stages": {}})  # a run folder of ours, pairs made by hand
    store.write_shard("pairs", 0, rows, PairRecord, [], {})
    manifest = run_pipeline(cfg, stages=["judge", "export"], engine=hf_engine)
    judged = store.read_stage("judge")
    assert len(judged) + len(store.read_rejects("judge")) == 3
    for row in judged:
        JudgeRecord.model_validate(row)
    assert manifest["stages"]["judge"]["counts"]["scored"] == 3
    folder = store.root / "datasets" / "preferences"
    prefs = [r for split in ("train", "test") for r in pq.read_table(folder / f"{split}-00000-of-00001.parquet").to_pylist()]
    assert len(prefs) == len(judged) and all(r["p_chosen"] > 0.5 for r in prefs)
    card = (store.root / "datasets" / "README.md").read_text()
    assert "## Judge" in card and "Revision preferred over the initial response" in card
