"""Logs as an audit side (audit/logs.py): every format read to the same rows, bad rows rejected with their
reason, the two sides matched by prompt with what has no partner counted; then `cai audit` on logs with a
stand-in judge that plants violations (exact counts), drift that flags a planted rise and not noise."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from cai_pipeline.audit.logs import log_prompts, match, read_log
from cai_pipeline.errors import UserError

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "How do I boil an egg?"}
REPLY = "Put it in boiling water for nine minutes."
HH = "\n\nHuman: How do I boil an egg?\n\nAssistant: " + REPLY


def _openai(messages, *replies, usage=None):
    choices = [{"index": i, "message": {"role": "assistant", "content": r}, "finish_reason": "stop"}
               for i, r in enumerate(replies)]
    response = {"id": "chatcmpl-1", "object": "chat.completion", "model": "served-v2", "choices": choices}
    if usage is not None:
        response["usage"] = {"completion_tokens": usage}
    return {"request": {"model": "served-v2", "messages": messages}, "response": response}


FORMATS = {
    "messages": {"messages": [USER, {"role": "assistant", "content": REPLY}]},
    "prompt_response": {"prompt": USER["content"], "response": REPLY},
    "messages_response": {"messages": [USER], "response": REPLY},
    "openai": _openai([USER], REPLY),
    "openai_batch": {"custom_id": "r1", "request": {"body": {"messages": [USER]}},
                     "response": {"status_code": 200, "body": _openai([USER], REPLY)["response"]}},
    "trl_conversational": {"prompt": [USER], "completion": [{"role": "assistant", "content": REPLY}]},
    "trl_standard": {"prompt": USER["content"], "completion": REPLY},
    "hh_rlhf": {"chosen": HH, "rejected": HH.replace("nine", "ninety")},
}


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif path.suffix == ".csv":
        pd.DataFrame([{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()}
                      for r in rows]).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_log_format_reads_to_the_same_row(tmp_path, fmt):
    rows, rejects = read_log(str(write(tmp_path / "log.jsonl", [FORMATS[fmt]])), "audit.responses")
    assert rejects == [] and len(rows) == 1
    row = rows[0]
    assert (row.prompt, row.response, row.sample_idx, row.tag) == ([USER], REPLY, 0, "untagged")
    reference, _ = read_log(str(write(tmp_path / "ref.jsonl", [FORMATS["prompt_response"]])), "audit.responses")
    assert row.prompt_id == reference[0].prompt_id  # the same prompt: the same key, whatever the format


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_parquet_and_csv_logs_read_like_jsonl(tmp_path, suffix):
    rows = [{"messages": [SYSTEM, USER, {"role": "assistant", "content": f"reply {i}"}], "tag": "benign"}
            for i in range(3)]
    got, rejects = read_log(str(write(tmp_path / f"log{suffix}", rows)), "audit.responses")
    want, _ = read_log(str(write(tmp_path / "log.jsonl", rows)), "audit.responses")
    assert rejects == [] and [replace(r, model="") for r in got] == [replace(r, model="") for r in want]
    # three responses to one prompt: numbered in file order, one prompt
    assert [r.sample_idx for r in got] == [0, 1, 2] and len(log_prompts([r.as_dict() for r in got])) == 1
    assert got[0].prompt == [SYSTEM, USER] and got[0].tag == "benign"


def test_several_choices_are_several_responses_with_their_lengths(tmp_path):
    rows, _ = read_log(str(write(tmp_path / "log.jsonl", [_openai([USER], "a b", "c d e"),
                                                          _openai([USER], "only one", usage=7)])), "x")
    assert [(r.response, r.sample_idx, r.n_tokens, r.length_unit, r.model) for r in rows] == [
        ("a b", 0, 2, "words", "served-v2"), ("c d e", 1, 3, "words", "served-v2"),
        ("only one", 2, 7, "tokens", "served-v2")]


def test_bad_rows_are_rejects_with_their_reason(tmp_path):
    rows = [FORMATS["messages"], {"messages": [USER]}, {"prompt": "hi", "response": "  "}, {"foo": 1},
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"messages": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"response": "orphan"}]
    got, rejects = read_log(str(write(tmp_path / "log.jsonl", rows)), "audit.responses")
    assert len(got) == 1
    assert [r["reason"] for r in rejects] == ["no_response", "empty_response", "unknown_format", "bad_messages",
                                              "ends_with_assistant", "no_prompt"]
    assert [r["key"] for r in rejects] == [f"log.jsonl:{i}" for i in range(2, 8)]  # the line of each


def test_a_log_with_nothing_usable_or_missing_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"audit.responses: no usable response in .*unknown|not a log row"):
        read_log(str(write(tmp_path / "log.jsonl", [{"foo": 1}])), "audit.responses")
    with pytest.raises(UserError, match=r"audit.baseline_responses: .*missing.jsonl does not exist"):
        read_log(str(tmp_path / "missing.jsonl"), "audit.baseline_responses")


def _rows(side: str, spec: dict[str, int]) -> list[dict]:
    return [{"side": side, "prompt_id": pid, "sample_idx": i, "response": f"{side} {pid} {i}"}
            for pid, n in spec.items() for i in range(n)]


def test_sides_are_matched_by_prompt_and_the_rest_is_counted():
    model = _rows("model", {"p1": 2, "p2": 1, "m-only": 2})
    baseline = _rows("baseline", {"p1": 1, "p2": 3, "b-only": 1, "b-only2": 1})
    pairs, unmatched = match(model, baseline)
    assert [(a["prompt_id"], a["sample_idx"], b["sample_idx"]) for a, b in pairs] == [("p1", 0, 0), ("p2", 0, 0)]
    assert unmatched == {"model_only_prompts": 1, "model_only_responses": 2, "model_extra_responses": 1,
                         "baseline_only_prompts": 2, "baseline_only_responses": 2, "baseline_extra_responses": 2}
    # every response is either in a pair or counted
    assert len(model) == len(pairs) + unmatched["model_only_responses"] + unmatched["model_extra_responses"]
    assert len(baseline) == len(pairs) + unmatched["baseline_only_responses"] + unmatched["baseline_extra_responses"]
