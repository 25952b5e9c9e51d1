"""Every record's pyarrow schema round-trips a real row through Parquet unchanged."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai_pipeline import records as R

MSG = [{"role": "user", "content": "Why is the sky blue?"}]
ROUND = {"principle_id": "harm-1", "critique": "c", "revision": "r", "cleaned": True, "kept_previous": None,
         "truncated": False, "check_before": {"passed": False, "reason": "61 words; at most 50"},
         "check_after": {"passed": True, "reason": ""}, "skipped": False}
PAIR = {"pair_id": "p1", "prompt_id": "x", "prompt": MSG, "a": "A text", "b": "B text", "origin": "sampled",
        "a_idx": 0, "b_idx": 1, "a_truncated": False, "b_truncated": True, "revision_principle_ids": []}
VERDICT = {"principle_id": "harm-1", "weight": 1.0, "p_a_first": 0.7, "p_a_second": 0.6,
           "reasoning_first": None, "reasoning_second": "because", "source": "check", "check_a": True,
           "check_b": False}
EXAMPLES = {
    R.PromptRecord: {"prompt_id": "x", "prompt": MSG},
    R.SampleRecord: {"prompt_id": "x", "sample_idx": 1, "prompt": MSG, "response": "Rayleigh.",
                     "finish_reason": "stop", "n_tokens": 3},
    R.ReviseRecord: {"prompt_id": "x", "sample_idx": 0, "prompt": MSG, "initial": "i", "initial_truncated": True,
                     "rounds": [ROUND], "final": "r", "final_truncated": False},
    R.PairRecord: PAIR,
    R.JudgeRecord: {**PAIR, "judge_principle_ids": ["harm-1"], "verdicts": [VERDICT], "p_a": 0.65, "consistent": True,
                    "label_source": "check"},
    R.RejectRecord: {"stage": "sample", "key": "x/0", "reason": "empty_response", "detail": "d", "row": "{}"},
    R.SFTRecord: {"prompt_id": "x", "sample_idx": 0, "messages": MSG, "principle_ids": ["a", "b"], "truncated": False},
    R.PreferenceRecord: {"pair_id": "p1", "prompt_id": "x", "prompt": MSG,
                         "chosen": [{"role": "assistant", "content": "c"}],
                         "rejected": [{"role": "assistant", "content": "r"}], "p_chosen": None,
                         "revision_principle_ids": ["a"], "judge_principle_ids": [], "origin": "revision",
                         "label_source": None, "chosen_truncated": False, "rejected_truncated": True},
    R.AuditResponseRecord: {"prompt_id": "x", "tag": "benign", "side": "model", "model": "embedded", "sample_idx": 0,
                            "prompt": MSG, "response": "Rayleigh.", "finish_reason": "stop", "n_tokens": 3,
                            "p_refusal": 0.2, "refused": False,
                            "checks": [{"principle_id": "brief", "passed": True, "reason": ""}]},
    R.AuditVerdictRecord: {"pair_id": "p1", "prompt_id": "x", "tag": "harmful", "sample_idx": 0,
                           "principle_id": "harm-1", "weight": 1.5, "order": "baseline_first", "p_model": 0.4},
}


@pytest.mark.parametrize("model", list(EXAMPLES), ids=lambda m: m.__name__)
def test_schema_round_trip(tmp_path, model):
    row = EXAMPLES[model]
    model.model_validate(row)  # the example is a valid record
    path = tmp_path / "t.parquet"
    pq.write_table(R.to_table([row], model), path)
    table = pq.read_table(path)
    assert table.schema.equals(R.arrow_schema(model))
    assert table.to_pylist() == [row]


def test_schema_is_explicit_about_nullability():
    schema = R.arrow_schema(R.PreferenceRecord)
    assert schema.field("p_chosen").nullable and schema.field("p_chosen").type == pa.float64()
    assert not schema.field("prompt_id").nullable
    assert schema.field("chosen").type == pa.list_(pa.field("item", pa.struct(
        [pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)]),
        nullable=False))


def test_an_empty_shard_keeps_its_schema(tmp_path):
    pq.write_table(R.to_table([], R.SampleRecord), tmp_path / "e.parquet")
    assert pq.read_table(tmp_path / "e.parquet").schema.equals(R.arrow_schema(R.SampleRecord))


def test_missing_field_is_an_error():
    row = dict(EXAMPLES[R.SampleRecord])
    del row["n_tokens"]
    with pytest.raises(ValueError, match=r"SampleRecord row 0: fields \['n_tokens'\] do not match the schema"):
        R.to_table([row], R.SampleRecord)


def test_a_null_in_a_required_field_is_an_error():
    row = {**EXAMPLES[R.SampleRecord], "response": None}
    with pytest.raises(ValueError, match=r"\['response'\] must not be null"):
        R.to_table([row], R.SampleRecord)
