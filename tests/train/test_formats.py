"""Other people's preference data, as it is: TRL's explicit and implicit-prompt layouts (UltraFeedback-
binarized), Anthropic's hh-rlhf transcripts, Parquet and JSON Lines; a row that cannot be used is a reject
with its reason, counted and written to rejects/train/, never a crash."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from cai_pipeline.errors import UserError
from cai_pipeline.train.data import find_splits
from cai_pipeline.train.formats import hh_turns, read_split

from .conftest import msg

HH = "hh-rlhf-harmless-base-test.jsonl.gz"
USER, CHOSEN, REJECTED = msg("user", "Is it safe?"), msg("assistant", "Yes, with care."), msg("assistant", "No.")
NORMAL = {"prompt": [USER], "chosen": [CHOSEN], "rejected": [REJECTED]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


def normalised(rows: list[dict], tmp_path: Path, kind: str = "preference"):
    got = read_split([write_jsonl(tmp_path / "rows.jsonl", rows)], kind)
    return [{k: v for k, v in r.items() if k not in ("_file", "p_chosen")} for r in got.rows], got.rejects


@pytest.mark.parametrize("row", [
    pytest.param({"prompt": [USER], "chosen": [CHOSEN], "rejected": [REJECTED]}, id="explicit"),
    pytest.param({"prompt": USER["content"], "chosen": [CHOSEN], "rejected": [REJECTED]}, id="explicit-string-prompt"),
    pytest.param({"chosen": [USER, CHOSEN], "rejected": [USER, REJECTED]}, id="implicit"),
    pytest.param({"prompt": USER["content"], "chosen": [USER, CHOSEN], "rejected": [USER, REJECTED],
                  "messages": [USER, CHOSEN], "score_chosen": 8.0, "score_rejected": 3.0}, id="ultrafeedback"),
    pytest.param({"chosen": "\n\nHuman: Is it safe?\n\nAssistant: Yes, with care.",
                  "rejected": "\n\nHuman: Is it safe?\n\nAssistant: No."}, id="hh-rlhf"),
])
def test_every_layout_is_the_same_pair(row, tmp_path):
    rows, rejects = normalised([row], tmp_path)
    assert rows == [NORMAL] and rejects == []


def test_multi_turn_prompts_are_split_at_the_reply(tmp_path):
    turns = [msg("system", "Be kind."), USER, msg("assistant", "Why?"), msg("user", "Curious.")]
    rows, _ = normalised([{"chosen": turns + [CHOSEN], "rejected": turns + [REJECTED]},
                          {"prompt": "Curious.", "chosen": turns + [CHOSEN], "rejected": turns + [REJECTED]}], tmp_path)
    assert rows == [{"prompt": turns, "chosen": [CHOSEN], "rejected": [REJECTED]}] * 2
    text = {"prompt": "Q: two plus two?\nA:", "chosen": " four", "rejected": " five"}
    assert normalised([text], tmp_path)[0] == [text]  # plain text (TRL's standard format) stays text


@pytest.mark.parametrize("row, reason", [
    pytest.param({"chosen": [USER, CHOSEN], "rejected": [msg("user", "Other question?"), REJECTED]},
                 "prompt_not_shared", id="different-prompts"),
    pytest.param({"chosen": [CHOSEN], "rejected": [REJECTED]}, "prompt_not_shared", id="no-prompt-turn"),
    pytest.param({"chosen": [USER, CHOSEN], "rejected": [USER, CHOSEN]}, "identical", id="identical"),
    pytest.param({"prompt": "Something else", "chosen": [USER, CHOSEN], "rejected": [USER, REJECTED]},
                 "prompt_mismatch", id="prompt-column-disagrees"),
    pytest.param({"chosen": "just text", "rejected": "other text"}, "not_hh_transcript", id="text-without-prompt"),
    pytest.param({"prompt": [USER], "chosen": "Yes", "rejected": [REJECTED]}, "bad_types", id="mixed"),
    pytest.param({"prompt": [USER], "chosen": None, "rejected": [REJECTED]}, "bad_types", id="null"),
])
def test_unusable_rows_are_rejects_with_their_reason(row, reason, tmp_path):
    rows, rejects = normalised([NORMAL, {"pair_id": "bad-1", **row}], tmp_path)
    assert rows == [NORMAL]
    assert [(r["stage"], r["key"], r["reason"]) for r in rejects] == [("train", "bad-1", reason)]
    assert rejects[0]["detail"].startswith(f"{tmp_path / 'rows.jsonl'}:2: ")
    assert json.loads(rejects[0]["row"])["pair_id"] == "bad-1"  # the row itself is kept


def test_sft_rows_need_an_assistant_turn(tmp_path):
    rows, rejects = normalised([{"messages": [USER, CHOSEN]}, {"messages": [USER]}, {"messages": "hi"}], tmp_path,
                               kind="sft")
    assert rows == [{"messages": [USER, CHOSEN]}]
    assert [r["reason"] for r in rejects] == ["no_assistant_turn", "bad_types"]


def test_jsonl_gz_json_and_parquet_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train-0.jsonl.gz", [NORMAL])
    (folder / "train-1.json").write_text(json.dumps([NORMAL, NORMAL]))  # one JSON list, as `datasets` reads too
    pq.write_table(pa.Table.from_pylist([NORMAL]), folder / "train-2.parquet")
    write_jsonl(folder / "test-0.jsonl", [NORMAL])
    (folder / "README.md").write_text("not data")
    splits = find_splits(folder)
    assert [p.name for p in splits["train"]] == ["train-0.jsonl.gz", "train-1.json", "train-2.parquet"]
    assert [p.name for p in splits["test"]] == ["test-0.jsonl"]
    assert len(read_split(splits["train"], "preference").rows) == 4
    (folder / "train-3.jsonl").write_text(json.dumps(NORMAL) + "\n{not json\n")
    with pytest.raises(UserError, match=r"train-3.jsonl:2: not valid JSON"):
        read_split([folder / "train-3.jsonl"], "preference")
    write_jsonl(folder / "bad.jsonl", [{"question": "?"}])
    with pytest.raises(UserError, match=r"bad.jsonl: missing column\(s\) chosen, rejected"):
        read_split([folder / "bad.jsonl"], "preference")


# ---------------------------------------------------------------------------------------------- real rows


def hh_lines(shared_data: Path, n: int, single_turn: bool) -> list[str]:
    """The first n lines of the real hh-rlhf file, as they are (single_turn: only one Human turn)."""
    out = []
    with gzip.open(shared_data / HH, "rt", encoding="utf-8") as f:
        for line in f:
            if not single_turn or json.loads(line)["chosen"].count("\n\nHuman:") == 1:
                out.append(line)
            if len(out) == n:
                return out
    raise AssertionError("too few rows")


def ultrafeedback_row(hh_line: str, i: int) -> dict:
    """An hh-rlhf row in UltraFeedback-binarized's columns: prompt (string), chosen/rejected (whole
    conversations, the prompt turn included), messages, scores, prompt_id."""
    d = json.loads(hh_line)
    chosen, rejected = hh_turns(d["chosen"]), hh_turns(d["rejected"])
    return {"prompt": chosen[0]["content"], "prompt_id": f"uf-{i}", "chosen": chosen, "rejected": rejected,
            "messages": chosen, "score_chosen": 8.0, "score_rejected": 4.0}


def test_every_real_hh_rlhf_row_is_a_pair(shared_data):
    got = read_split([shared_data / HH], "preference")
    # four of the 2312 rows have an empty chosen reply ("\n\nAssistant: " and nothing after): nothing to learn
    assert len(got.rows) == 2308 and [r["reason"] for r in got.rejects] == ["empty_chosen"] * 4
    lines = hh_lines(shared_data, 200, single_turn=False)
    for row in got.rows[:190]:
        transcript = json.loads(lines[int(row["_file"].rsplit(":", 1)[1]) - 1])["chosen"]
        assert row["prompt"][-1]["role"] == "user" and [m["role"] for m in row["chosen"]] == ["assistant"]
        assert transcript.count("\n\nHuman:") == sum(m["role"] == "user" for m in row["prompt"])
        assert row["chosen"][0]["content"] in transcript and row["prompt"][0]["content"] in transcript


def test_hh_rlhf_and_ultrafeedback_files_train_as_they_are(tiny_model, make_cfg, shared_data, tmp_path):
    """The same 16 real conversations as hh-rlhf JSONL (the lines as they are) and as an UltraFeedback-shaped
    Parquet: identical token ids; both train. Two broken UltraFeedback rows become counted rejects in
    rejects/train/, which pandas reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cai_pipeline.stages.train import train_run as train
    from cai_pipeline.train.data import end_token_ids, tokenize_rows
    from cai_pipeline.train.modeling import load_policy

    lines = hh_lines(shared_data, 16, single_turn=True)
    (tmp_path / "hh").mkdir()
    (tmp_path / "hh" / "train-00000.jsonl.gz").write_bytes(gzip.compress("".join(lines).encode()))
    uf = [ultrafeedback_row(line, i) for i, line in enumerate(lines)]
    broken = [{**uf[0], "prompt_id": "uf-other-prompt", "rejected": [msg("user", "another question"), REJECTED]},
              {**uf[1], "prompt_id": "uf-wrong-prompt", "prompt": "not the question asked"}]
    (tmp_path / "uf").mkdir()
    pq.write_table(pa.Table.from_pylist(uf + broken), tmp_path / "uf" / "train-00000-of-00001.parquet")

    tokenizer, _ = load_policy(tiny_model)
    ids = {name: tokenize_rows(read_split(find_splits(tmp_path / name)["train"], "preference").rows, tokenizer,
                               max_length=256, max_prompt_length=128, end_ids=end_token_ids(tokenizer)).fingerprint()
           for name in ("hh", "uf")}
    assert ids["hh"] == ids["uf"]
    for name in ("hh", "uf"):
        s = train(make_cfg(tiny_model, tmp_path / name, name=f"run-{name}", max_steps=2, max_length=256,
                           max_prompt_length=128))
        assert s["steps"] == 2 and s["counts"]["train"]["rows"] == 16 and s["eval_after"] is None
    assert s["counts"]["train"]["rejected"] == {"prompt_not_shared": 1, "prompt_mismatch": 1}
    rejects = pd.read_parquet(tmp_path / "run-uf" / "rejects" / "train")
    assert sorted(zip(rejects["key"], rejects["reason"])) == [("uf-other-prompt", "prompt_not_shared"),
                                                              ("uf-wrong-prompt", "prompt_mismatch")]
    assert (rejects["stage"] == "train").all() and rejects["detail"].str.contains("train-00000-of-00001").all()


@pytest.mark.parametrize("row, reason", [
    pytest.param({**NORMAL, "p_chosen": 3.0}, "bad_p_chosen", id="p_chosen-above-1"),
    pytest.param({**NORMAL, "p_chosen": -0.2}, "bad_p_chosen", id="p_chosen-below-0"),
    pytest.param({**NORMAL, "p_chosen": "0.7"}, "bad_p_chosen", id="p_chosen-as-text"),
    pytest.param({**NORMAL, "p_chosen": True}, "bad_p_chosen", id="p_chosen-a-bool"),
    pytest.param({"prompt": [USER], "chosen": [CHOSEN], "rejected": [CHOSEN]}, "identical", id="explicit-identical"),
    pytest.param({"prompt": "Q?", "chosen": "same", "rejected": "same"}, "identical", id="text-identical"),
    pytest.param({"prompt": [USER], "chosen": [msg("assistant", " ")], "rejected": [REJECTED]}, "empty_chosen",
                 id="empty-chosen"),
    pytest.param({"prompt": [USER], "chosen": [CHOSEN], "rejected": [msg("assistant", "")]}, "empty_rejected",
                 id="empty-rejected"),
    pytest.param({"prompt": [msg("user", "  ")], "chosen": [CHOSEN], "rejected": [REJECTED]}, "empty_prompt",
                 id="empty-prompt"),
    pytest.param({"prompt": "", "chosen": "a", "rejected": "b"}, "empty_prompt", id="empty-text-prompt"),
    pytest.param({"prompt": "Q \ud800?", "chosen": "a", "rejected": "b"}, "invalid_text", id="lone-surrogate"),
])
def test_rows_that_would_train_on_nothing_or_an_impossible_target_are_rejects(row, reason, tmp_path):
    """p_chosen 3.0 trained the loss to -36; "0.7" read as "no judge ran"; identical or empty texts teach nothing."""
    rows, rejects = normalised([row, NORMAL], tmp_path)
    assert rows == [NORMAL] and [r["reason"] for r in rejects] == [reason]
    assert rejects[0]["detail"].startswith(str(tmp_path / "rows.jsonl") + ":1: ")
    if reason == "bad_p_chosen":
        assert "from 0 to 1" in rejects[0]["detail"]


def test_p_chosen_in_range_or_absent_is_kept(tmp_path):
    got = read_split([write_jsonl(tmp_path / "rows.jsonl", [{**NORMAL, "p_chosen": 0}, {**NORMAL, "p_chosen": 1},
                                                              {**NORMAL, "p_chosen": None}, NORMAL])], "preference")
    assert [r["p_chosen"] for r in got.rows] == [0.0, 1.0, None, None] and got.rejects == []


def test_a_line_separator_inside_a_text_does_not_split_the_row(tmp_path):
    text = "one\u2028two\u2029three\x85four"
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({**NORMAL, "chosen": [msg("assistant", text)]}, ensure_ascii=False) + "\n")
    got = read_split([path], "preference")
    assert got.rejects == [] and got.rows[0]["chosen"][0]["content"] == text


def test_a_truncated_gzip_file_is_one_line(tmp_path):
    whole = gzip.compress(b"".join(json.dumps(NORMAL).encode() + b"\n" for _ in range(50)))
    (tmp_path / "rows.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="rows.jsonl.gz: not readable"):
        read_split([tmp_path / "rows.jsonl.gz"], "preference")
