"""Prompt files in every supported format, stable ids, de-duplication, rejects, and clear errors."""

from __future__ import annotations

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai_pipeline.errors import UserError
from cai_pipeline.inputs import BUNDLED_PROMPTS, hh_first_human_turn, hh_split, load_prompts, prompt_id


def jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_prompt_and_messages(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "How do tides work?"},
                                     {"messages": [{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "Name a prime."}]}])
    got = load_prompts(str(f))
    assert [r["prompt"] for r in got.rows] == [
        [{"role": "user", "content": "How do tides work?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}],
    ]
    assert got.rejects == []


def test_parquet_and_csv_read_the_same_prompts(tmp_path):
    texts = ["first prompt", "second, with a comma", 'third "quoted"']
    pq.write_table(pa.table({"prompt": texts}), tmp_path / "p.parquet")
    with open(tmp_path / "p.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt"])
        w.writerows([[t] for t in texts])
    a = load_prompts(str(tmp_path / "p.parquet")).rows
    b = load_prompts(str(tmp_path / "p.csv")).rows
    assert [r["prompt"][0]["content"] for r in a] == texts
    assert a == b


def test_hh_rlhf_transcripts_give_the_first_human_turn(tmp_path):
    line = {"chosen": "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you want to?\n\nHuman: I'm locked out."
                      "\n\nAssistant: Call a locksmith.", "rejected": "\n\nHuman: How do I pick a lock?\n\nAssistant: No."}
    f = tmp_path / "hh.jsonl.gz"
    f.write_bytes(gzip.compress((json.dumps(line) + "\n").encode()))
    got = load_prompts(str(f))
    assert got.rows[0]["prompt"] == [{"role": "user", "content": "How do I pick a lock?"}]
    turns, last = hh_split(line["chosen"])
    assert [t["role"] for t in turns] == ["user", "assistant", "user"] and last == "Call a locksmith."


def test_real_hh_rlhf_file(shared_data):
    got = load_prompts(str(shared_data / "hh-rlhf-harmless-base-test.jsonl.gz"), limit=50)
    assert len(got.rows) == 50
    assert all(r["prompt"][0]["role"] == "user" and r["prompt"][0]["content"] for r in got.rows)
    assert len({r["prompt_id"] for r in got.rows}) == 50


def test_prompt_ids_are_stable_and_content_based(tmp_path):
    msgs = [{"role": "user", "content": "Hello"}]
    assert prompt_id(msgs) == prompt_id([dict(m) for m in msgs])
    assert prompt_id(msgs) != prompt_id([{"role": "user", "content": "Hello!"}])
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello"}])
    assert load_prompts(str(f)).rows[0]["prompt_id"] == prompt_id(msgs)
    assert prompt_id(msgs) == "1d9f4feaa9db000b"  # pinned: ids must not change between releases


def test_given_ids_are_kept(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt_id": "q1", "prompt": "a"}, {"prompt_id": "q2", "prompt": "b"}])
    assert [r["prompt_id"] for r in load_prompts(str(f)).rows] == ["q1", "q2"]


def test_duplicates_and_empty_prompts_are_rejected_with_reasons(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "same"}, {"prompt": "   "}, {"prompt": "same"}, {"prompt": "other"}])
    got = load_prompts(str(f))
    assert [r["prompt"][0]["content"] for r in got.rows] == ["same", "other"]
    assert sorted(r["reason"] for r in got.rejects) == ["duplicate_prompt", "empty_prompt"]
    assert all(json.loads(r["row"]) for r in got.rejects)  # the original row is kept


def test_limit_counts_kept_prompts(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": " "}, *[{"prompt": f"p{i}"} for i in range(5)]])
    got = load_prompts(str(f), limit=3)
    assert [r["prompt"][0]["content"] for r in got.rows] == ["p0", "p1", "p2"]


def test_system_prompt_is_prepended(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    rows = load_prompts(str(f), system_prompt="You are careful.").rows
    assert rows[0]["prompt"][0] == {"role": "system", "content": "You are careful."}


def test_bundled_prompt_set():
    got = load_prompts(None)
    assert got.source == str(BUNDLED_PROMPTS)
    assert 50 <= len(got.rows) <= 80 and not got.rejects


@pytest.mark.parametrize("content,pattern", [
    (None, r"does not exist"),
    (b"", r"no prompts in the file"),
    (b'{"prompt": "ok"}\n\xff\xfe bad bytes\n', r"not UTF-8 text \(invalid byte at offset 17\)"),
    (b'{"prompt": "ok"}\n{"text": "no prompt field"}\n', r"p.jsonl:2: row has neither 'prompt' nor 'messages'"),
    (b'{"prompt": "ok"}\n{not json}\n', r"p.jsonl:2: not valid JSON"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}\n', r"p.jsonl:1: 'messages' must be a list"),
    (b'{"prompt": ["a", "b"]}\n', r"'prompt' must be a string"),
    (b'{"prompt": ""}\n', r"every row was rejected \(empty_prompt\)"),
])
def test_bad_prompt_files_give_one_line(tmp_path, content, pattern):
    f = tmp_path / "p.jsonl"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(UserError, match=pattern) as err:
        load_prompts(str(f))
    assert "\n" not in str(err.value)


def test_unknown_extension(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("hello")
    with pytest.raises(UserError, match="unknown prompt file type"):
        load_prompts(str(f))


def test_hh_first_turn_without_assistant():
    assert hh_first_human_turn("\n\nHuman: only a question") == "only a question"


def test_prompt_parts_are_disjoint_and_cover_the_set():
    from cai_pipeline.inputs import load_prompts

    whole = {r["prompt_id"] for r in load_prompts(None).rows}
    parts = [{r["prompt_id"] for r in load_prompts(None, part=k, parts=3).rows} for k in range(3)]
    assert set().union(*parts) == whole and sum(map(len, parts)) == len(whole)
    assert all(len(p) >= len(whole) // 6 for p in parts)  # roughly even: a hash, not a range
    first_ten = {r["prompt_id"] for r in load_prompts(None, limit=10).rows}
    halves = [{r["prompt_id"] for r in load_prompts(None, limit=10, part=k, parts=2).rows} for k in range(2)]
    assert halves[0] | halves[1] == first_ten and not halves[0] & halves[1]  # limit first, then the part
