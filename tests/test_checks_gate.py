"""Checkable principles downstream of the audit: the `cai iterate` gate on a check's pass rate, the round
record, `cai compare`'s tables, and the dataset card's count of labels by source — on hand-made summaries."""

from __future__ import annotations

import pytest

from cai_pipeline.card import judge_section, label_sources
from cai_pipeline.compare import audit_rows, check_round_rows
from cai_pipeline.constitution import Constitution
from cai_pipeline.errors import UserError
from cai_pipeline.iterate import audit_numbers, check_gate_ids, gate, round_line
from tests.test_iterate import summary


def with_check(difference: float, low: float, high: float, **more):
    s = summary()
    row = {"pass_rate_model": 0.5 + difference, "pass_rate_baseline": 0.5, "difference": difference,
           "difference_ci_low": low, "difference_ci_high": high, "win_rate": 0.5 + difference / 2,
           "n": 40, **more}
    for key in ("pass_rate_model", "pass_rate_baseline", "win_rate"):
        row.setdefault(f"{key}_ci_low", row[key] - 0.1)
        row.setdefault(f"{key}_ci_high", row[key] + 0.1)
    return s.model_validate({**s.model_dump(), "checks": {"short": row}})


def test_gate_stops_when_a_named_check_fell_by_its_whole_interval():
    fell = gate(with_check(-0.2, -0.35, -0.05), 0.10, ["short"])
    assert not fell["passed"] and "the pass rate of 'short' fell" in fell["reason"]
    unclear = gate(with_check(-0.1, -0.25, 0.05), 0.10, ["short"])  # the interval reaches 0: not shown to fall
    assert unclear["passed"]
    assert gate(with_check(-0.2, -0.35, -0.05), 0.10, [])["passed"]  # not named: not gated on
    missing = gate(summary(), 0.10, ["short"])
    assert not missing["passed"] and "no pass rate for the check of 'short'" in missing["reason"]


def test_gate_ids_must_be_checkable_principles():
    c = Constitution(name="c", version="1", principles=[
        {"id": "short", "critique": "c", "revision": "r", "rationale": "x", "check": {"max_words": 3}},
        {"id": "kind", "critique": "c", "revision": "r", "rationale": "x", "comparison": "Which?"}])
    check_gate_ids(["short"], c)
    with pytest.raises(UserError, match="'kind' is not a checkable principle of c; its checkable principles are short"):
        check_gate_ids(["kind"], c)


def test_the_round_record_line_and_compare_show_the_checks():
    s = with_check(0.25, 0.1, 0.4)
    numbers = audit_numbers(s)
    assert numbers["checks"]["short"]["difference"] == 0.25
    entry = {"name": "01-rl", "baseline": "b", "audit": numbers, "gate": None, "audit_vs_base": numbers}
    assert "checks pass short 0.75 vs 0.50" in round_line(entry)
    [row] = check_round_rows([entry])
    assert row == ("short", "pass 75.0 vs 50.0, +25.0 [+10.0, +40.0]", "pass 75.0 vs 50.0, +25.0 [+10.0, +40.0]")
    assert ("check: short", "pass 75.0 vs 50.0, +25.0 [+10.0, +40.0]", "—") in audit_rows(s, summary())


def test_the_card_counts_labels_by_source():
    rows = [{"label_source": "check", "p_a": 0.95, "consistent": True, "origin": "sampled", "verdicts": []},
            {"label_source": "mixed", "p_a": 0.7, "consistent": True, "origin": "sampled", "verdicts": []},
            {"label_source": "check", "p_a": 0.05, "consistent": True, "origin": "sampled", "verdicts": []},
            {"p_a": 0.6, "consistent": False, "origin": "revision", "verdicts": []}]  # a row from before checks
    assert label_sources(rows) == {"check": 2, "judge": 1, "mixed": 1}
    assert 'Labels by source: {"check": 2, "judge": 1, "mixed": 1}' in judge_section(rows, [])
