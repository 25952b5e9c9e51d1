"""The judge and the audit with checkable principles, on hand-made pairs: a check decides the pairs it
separates at judge.check_confidence with the source recorded, passes the rest to the LLM (or ties them), makes
no engine call when checks decide everything; and the audit's exact pass rates with their intervals."""

from __future__ import annotations

import numpy as np
import pytest

from cai_pipeline.audit.stats import check_score
from cai_pipeline.constitution import Constitution
from cai_pipeline.judging import judge_pairs
from cai_pipeline.stages.judge import label_source
from tests.echo_engine import EchoEngine

SHORT = {"id": "short", "critique": "c", "revision": "r", "rationale": "x", "check": {"max_words": 3}}
JUDGED = {"id": "kind", "critique": "c", "revision": "r", "rationale": "x", "comparison": "Which is kinder?"}


class CountingEngine(EchoEngine):
    """Prefers (A) by one nat, and counts the conversations it scored."""

    def __init__(self):
        super().__init__()
        self.scored = 0

    def choice_logprobs(self, convs, choices):
        self.scored += len(convs)
        return super().choice_logprobs(convs, choices)


def principles(*items):
    return Constitution(name="t", version="1", principles=list(items)).principles


PAIRS = [{"pair_id": "sep", "prompt": "hi", "a": "one two", "b": "one two three four"},
         {"pair_id": "sep-flipped", "prompt": "hi", "a": "one two three four", "b": "one two"},
         {"pair_id": "both-pass", "prompt": "hi", "a": "one", "b": "two"}]


def test_check_only_decides_separated_pairs_ties_the_rest_and_calls_no_engine():
    class NoEngine:
        def __getattr__(self, name):
            raise AssertionError("a check-only judge touched the engine")

    recs = judge_pairs(NoEngine(), PAIRS, principles(SHORT), k=1, check_confidence=0.9)
    sep, flipped, tie = recs
    assert sep["p_a"] == pytest.approx(0.9) and flipped["p_a"] == pytest.approx(0.1)
    assert sep["p_a"] + flipped["p_a"] == pytest.approx(1.0)  # the two orientations are one verdict
    [v] = sep["verdicts"]
    assert (v["source"], v["check_a"], v["check_b"], v["p_a_first"], v["p_a_second"]) == ("check", True, False, 0.9, 0.9)
    assert flipped["verdicts"][0]["check_a"] is False and flipped["verdicts"][0]["check_b"] is True
    assert tie["p_a"] == 0.5 and sep["consistent"] and label_source(sep["verdicts"]) == "check"


def test_a_principle_with_both_asks_the_llm_only_where_the_check_does_not_separate():
    both = {**SHORT, "comparison": "Which is shorter?"}
    engine = CountingEngine()
    recs = judge_pairs(engine, PAIRS, principles(both, JUDGED), k=2, check_confidence=0.95)
    # sep and sep-flipped are one canonical pair: its check verdict plus the LLM's 'kind' (2 orders); the
    # both-pass pair asks the LLM both principles in both orders
    assert engine.scored == 2 + 4
    sources = {r["pair_id"]: {v["principle_id"]: v["source"] for v in r["verdicts"]} for r in recs}
    assert sources["sep"] == {"short": "check", "kind": "judge"} and label_source(recs[0]["verdicts"]) == "mixed"
    assert sources["both-pass"] == {"short": "judge", "kind": "judge"}
    short = next(v for v in recs[2]["verdicts"] if v["principle_id"] == "short")
    assert short["check_a"] is True and short["check_b"] is True  # the check's result is kept on judged verdicts


def test_without_check_confidence_the_llm_judges_everything():
    engine = CountingEngine()
    judge_pairs(engine, PAIRS[:1], principles({**SHORT, "comparison": "Which is shorter?"}), k=1)
    assert engine.scored == 2


def test_check_score_pass_rates_difference_and_win_rate():
    model = [True, True, True, False] * 10
    baseline = [False, True, False, False] * 10
    units = [f"p{i}" for i in range(40)]
    s = check_score(model, baseline, units, n_boot=500, confidence=0.95, seed=0)
    assert (s["pass_rate_model"], s["pass_rate_baseline"], s["difference"], s["n"]) == (0.75, 0.25, 0.5, 40)
    assert s["win_rate"] == 0.75  # 2 of 4 pairs won, 2 tied
    assert s["difference_ci_low"] > 0 and s["pass_rate_model_ci_low"] < 0.75 < s["pass_rate_model_ci_high"]
    same = check_score(model, model, units, n_boot=500, confidence=0.95, seed=0)
    assert same["difference_ci_low"] == same["difference_ci_high"] == 0 and same["win_rate"] == 0.5
    assert check_score([], [], [], n_boot=100, confidence=0.95, seed=0)["pass_rate_model"] is None
    assert np.isclose(s["pass_rate_model_ci_low"], check_score(model, baseline, units, n_boot=500, confidence=0.95,
                                                                seed=0)["pass_rate_model_ci_low"])  # seeded


def test_the_audit_reports_each_check_exactly(monkeypatch, model_path, tmp_path, capsys):
    """With the audit's stand-in engine (words 'wN' 3-30 long): every checkable principle gets pass rates that
    match the responses file, in summary.json, the README and the terminal; check-only principles are not
    sent to the judge."""
    import json

    import pandas as pd

    import cai_pipeline.engines
    from cai_pipeline.checks import word_count
    from cai_pipeline.cli import main
    from tests.audit.test_stage import CONFIG, MODELS, StandIn

    (tmp_path / "c.yaml").write_text(
        "name: t\nversion: 1\nprinciples:\n"
        "  - {id: kind, critique: c, revision: r, rationale: x, comparison: 'Which is kinder?'}\n"
        "  - {id: short, critique: c, revision: r, rationale: x, check: {max_words: 15}}\n"
        "  - {id: no_w1, critique: c, revision: r, rationale: x, comparison: 'Which?', check: {forbid: ['w1\\b']}}\n")
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: StandIn(longer_seed=None))
    out = tmp_path / "run"
    assert main(["audit", CONFIG, f"out_dir={out}", "audit.limit=12", "audit.n=2", *MODELS,
                 f"constitution={tmp_path / 'c.yaml'}"]) == 0
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert list(summary["principles"]) == ["kind", "no_w1"]  # the judged ones
    assert list(summary["checks"]) == ["short", "no_w1"]
    responses = pd.read_parquet(out / "audit" / "responses.parquet")
    for side, key in (("model", "pass_rate_model"), ("baseline", "pass_rate_baseline")):
        rows = responses[responses["side"] == side]
        expected = sum(word_count(t) <= 15 for t in rows["response"]) / len(rows)
        assert summary["checks"]["short"][key] == pytest.approx(expected, abs=1e-4)
        assert all(len(c) == 2 for c in rows["checks"])
    short = summary["checks"]["short"]
    assert short["difference"] == pytest.approx(short["pass_rate_model"] - short["pass_rate_baseline"], abs=1e-4)
    assert short["difference_ci_low"] <= short["difference"] <= short["difference_ci_high"]
    readme = (out / "audit" / "README.md").read_text()
    assert "## Checkable principles" in readme and "| short |" in readme
    assert "checkable principles" in capsys.readouterr().out


def test_revise_tells_the_critique_the_check_and_records_it_before_and_after():
    from cai_pipeline.config import load_config
    from cai_pipeline.stages import revise
    from cai_pipeline.stages.base import StageContext
    from cai_pipeline.templates import TemplateSet
    from tests.stages.test_revise import Scripted

    c = Constitution(name="t", version="1", principles=[SHORT])
    asked = []

    def answers(conv):
        asked.append(conv[-1]["content"])
        return "Too long." if "critique" in conv[-1]["content"].lower() else "Short now."

    rows = [{"prompt_id": f"p{i}", "sample_idx": 0, "prompt": [{"role": "user", "content": "q"}], "response": text,
             "finish_reason": "stop", "n_tokens": 3} for i, text in enumerate(["Fine.", "a much longer answer here"])]

    def run(passing: bool):
        asked.clear()
        cfg = load_config(None, ["out_dir=x", "revise.rounds=1", "revise.few_shot=0",
                                 f"revise.revise_passing={str(passing).lower()}"])
        ctx = StageContext(seed=0, shard=0, cfg=cfg, constitution=c, templates=TemplateSet())
        return revise.run({"sample": rows}, Scripted(answers), ctx)

    result = run(passing=False)
    passed, failed = result.rows
    assert passed["rounds"][0]["skipped"] and passed["rounds"][0]["kept_previous"] == "passes_check"
    assert passed["final"] == "Fine." and passed["rounds"][0]["check_before"]["passed"]
    assert failed["rounds"][0]["check_before"] == {"passed": False, "reason": "5 words, more than max_words 3"}
    assert failed["rounds"][0]["check_after"] == {"passed": True, "reason": "passes"} and failed["final"] == "Short now."
    assert len(asked) == 2 and "it fails (5 words, more than max_words 3)" in asked[0]  # only the failing row
    assert "fixes this: 5 words, more than max_words 3" in asked[1]
    assert result.counts["skipped_passing_check"] == 1 and result.counts["check_fixed"] == 1
    result = run(passing=True)  # the default: every response revised, the check's result still shown
    assert not any(r["rounds"][0]["skipped"] for r in result.rows) and len(asked) == 4
    assert "it passes." in asked[0]


def test_a_check_only_audit_has_check_rows_and_no_judged_ones(monkeypatch, model_path, tmp_path):
    import json

    import cai_pipeline.engines
    from cai_pipeline.cli import main
    from tests.audit.test_stage import CONFIG, MODELS, StandIn

    (tmp_path / "c.yaml").write_text("name: t\nversion: 1\nprinciples:\n"
                                     "  - {id: short, critique: c, revision: r, rationale: x, check: {max_words: 15}}\n")
    engine = StandIn()
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: engine)
    assert main(["audit", CONFIG, f"out_dir={tmp_path / 'run'}", "audit.limit=6", "audit.n=1", "judge.principles=1",
                 *MODELS, f"constitution={tmp_path / 'c.yaml'}"]) == 0
    summary = json.loads((tmp_path / "run" / "audit" / "summary.json").read_text())
    assert summary["principles"] == {} and summary["overall"]["win_rate"] is None
    assert summary["checks"]["short"]["n"] == 6
    assert summary["overall"]["mean_length_change"] is not None
