"""Judge-vs-people agreement (cai_pipeline/agreement.py): Cohen's κ and the expected calibration error against
numbers worked out by hand, the interval, per-principle rows; and `cai judge-eval` on a Review tab export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cai_pipeline import cli
from cai_pipeline.agreement import agreement, kappa, reliability
from tests.conftest import one_line

HUMAN = ["a", "a", "a", "a", "b", "b", "b", "b", "tie", "tie"]
P = [0.95, 0.95, 0.85, 0.3, 0.2, 0.2, 0.6, 0.1, 0.5, 0.7]  # the judge picks a a a b b b a b tie a


def test_kappa_by_hand():
    """Agreement on items 1-3, 5, 6, 8, 9: p_o = 7/10. Marginals: people a .4, b .4, tie .2; judge a .5, b .4,
    tie .1; p_e = .4·.5 + .4·.4 + .2·.1 = .38. κ = (.7 − .38)/(1 − .38) = .32/.62 = 0.516129..."""
    code = {"a": 0, "b": 1, "tie": 2}
    human = [code[h] for h in HUMAN]
    judge = [0, 0, 0, 1, 1, 1, 0, 1, 2, 0]
    assert float(kappa(human, judge, np.ones(10))) == pytest.approx(0.32 / 0.62, abs=1e-12)
    assert float(kappa(human, human, np.ones(10))) == 1.0
    assert np.isnan(kappa([0] * 4, [0] * 4, np.ones(4)))  # both always "a": chance agreement 1, κ undefined
    # weights are counts: an item weighted 2 counts as two copies of it
    w = np.ones(10)
    w[3] = 2
    assert float(kappa(human, judge, w)) == pytest.approx(float(kappa(human + [0], judge + [1], np.ones(11))))


def test_expected_calibration_error_by_hand():
    """Outcome 1 for a, 0 for b, ½ for tie; bins of width .1. Gaps × share: .95 vs 1 (×.2) .01, .85 vs 1 .015,
    .3 vs 1 .07, .2 vs 0 (×.2) .04, .6 vs 0 .06, .1 vs 0 .01, .5 vs .5 0, .7 vs .5 .02: ECE .225."""
    outcome = [{"a": 1.0, "b": 0.0, "tie": 0.5}[h] for h in HUMAN]
    table, ece = reliability(P, outcome)
    assert ece == pytest.approx(0.225)
    assert [r["n"] for r in table] == [1, 2, 1, 1, 1, 1, 1, 2]  # bins 1, 2, 3, 5, 6, 7, 8, 9
    assert table[-1] == {"bin": [0.9, 1.0], "n": 2, "mean_p": 0.95, "human_a": 1.0}


def test_report_rows_overall_and_per_principle():
    items = [{"unit": f"q{i // 2}", "principle_id": "harm" if i % 2 else "honesty", "p": p, "human": h}
             for i, (p, h) in enumerate(zip(P, HUMAN))]
    report = agreement(items, bootstrap=300)
    o = report["overall"]
    assert o["n"] == 10 and o["agreement"] == 0.7 and o["kappa"] == pytest.approx(0.5161, abs=1e-4)
    assert o["kappa_ci_low"] <= o["kappa"] <= o["kappa_ci_high"] and o["ece"] == pytest.approx(0.225)
    assert o["human"] == {"a": 4, "b": 4, "tie": 2} and o["judge"] == {"a": 5, "b": 4, "tie": 1}
    assert list(report["principles"]) == ["honesty", "harm"] and sum(r["n"] for r in report["principles"].values()) == 10


def review_line(i: int, human: str, p: float) -> dict:
    return {"format": "cai-review/1", "run": "/runs/demo", "judge": "embedded", "item": f"pair{i}/harm",
            "pair_id": f"pair{i}", "prompt_id": f"q{i}", "principle_id": "harm", "question": "Which is less harmful?",
            "prompt": [{"role": "user", "content": f"question {i}"}], "a": "yes", "b": "no", "shown_first": "a",
            "human": human, "p_a": p, "p_a_first": p, "p_a_second": p, "stratum": "harm · clear",
            "labelled_at": "2026-01-01T00:00:00Z"}


def test_judge_eval_reads_a_review_export_without_a_model(tmp_path, capsys):
    lines = [review_line(i, h, p) for i, (h, p) in enumerate(zip(HUMAN, P))] + [review_line(10, "skip", 0.9)]
    data = tmp_path / "review-demo.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out, plot = tmp_path / "r.json", tmp_path / "r.png"
    assert cli.main(["judge-eval", "--data", str(data), "--out", str(out), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "11 labels" in printed and "(1 skipped)" in printed and "+0.516" in printed
    report = json.loads(out.read_text())
    assert report["agreement"]["overall"]["n"] == 10 and report["judge"] == "embedded"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_damaged_review_line_is_one_line(tmp_path, capsys):
    bad = review_line(0, "maybe", 0.5)
    data = tmp_path / "review.jsonl"
    data.write_text(json.dumps(review_line(1, "a", 0.7)) + "\n" + json.dumps(bad) + "\n")
    one_line(capsys, cli.main(["judge-eval", "--data", str(data)]), "review.jsonl:2", "human")
