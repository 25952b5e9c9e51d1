"""A checkable principle through `cai run` on the real embedded model: the revise stage records the check
before and after each round, the judge takes its verdict from the check wherever the check separates a pair
(the passing response is always `chosen`), and a check-only constitution judges without loading a model."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import cai_pipeline.engines as engines
from cai_pipeline.checks import word_count
from cai_pipeline.cli import main
from tests.conftest import REPO

pytestmark = pytest.mark.model
MAX_WORDS = 8

CONSTITUTION = f"""name: short
version: 1
principles:
  - id: short
    critique: Is the response longer than it needs to be?
    revision: Rewrite the response in at most {MAX_WORDS} words.
    rationale: Short answers are easier to read.
    check:
      max_words: {MAX_WORDS}
"""


def test_a_check_labels_the_pairs_it_separates_and_judges_without_a_model(tmp_path, monkeypatch, lent_vllm):
    (tmp_path / "short.yaml").write_text(CONSTITUTION)
    out = tmp_path / "run"
    args = ["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={out}", f"constitution={tmp_path / 'short.yaml'}",
            "prompts.limit=3", "sample.n=3", "sample.max_tokens=16", "revise.max_tokens=16", "revise.rounds=1",
            "revise.few_shot=0", "judge.principles=1", "engine.kv_cache_gb=1", "export.test_fraction=0",
            "stages=[sample,revise,pairs,judge,export]"]
    assert main([*args, "--stages", "sample,revise,pairs"]) == 0  # on the session's vLLM engine (lent_vllm)

    for r in pq.read_table(out / "revise" / "part-00000.parquet").to_pylist():
        [round_] = r["rounds"]
        before, after = round_["check_before"], round_["check_after"]
        assert before["passed"] == (word_count(r["initial"]) <= MAX_WORDS)
        assert after["passed"] == (word_count(r["final"]) <= MAX_WORDS)

    def no_engine(*a, **k):
        raise AssertionError("the judge stage loaded a model for a check-only constitution")

    monkeypatch.setattr(engines, "make_engine", no_engine)
    assert main([*args, "--stages", "judge,export"]) == 0

    judged = pq.read_table(out / "judge").to_pylist()
    rejected = pq.read_table(out / "rejects" / "judge").to_pylist() if (out / "rejects" / "judge").exists() else []
    pairs = pq.read_table(out / "pairs").to_pylist()
    assert len(judged) + len(rejected) == len(pairs)
    separated = {p["pair_id"] for p in pairs if (word_count(p["a"]) <= MAX_WORDS) != (word_count(p["b"]) <= MAX_WORDS)}
    assert {j["pair_id"] for j in judged} == separated  # the rest are ties (check-only: no judge to ask)
    assert all(r["reason"] == "tie" for r in rejected)
    for j in judged:
        [v] = j["verdicts"]
        assert v["source"] == "check" and j["label_source"] == "check"
        assert {v["p_a_first"], v["p_a_second"]} == {0.95 if v["check_a"] else 0.05}
    prefs = pq.read_table(out / "datasets" / "preferences").to_pylist()
    assert len(prefs) == len(separated)
    for row in prefs:
        assert row["label_source"] == "check"
        assert word_count(row["chosen"][-1]["content"]) <= MAX_WORDS < word_count(row["rejected"][-1]["content"])
