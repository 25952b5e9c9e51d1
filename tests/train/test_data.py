"""Tokenisation with the embedded model's chat template, truncation, packing, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cai_pipeline.errors import UserError
from cai_pipeline.train.data import (
    block_mask,
    collate_pairs,
    end_token_ids,
    find_splits,
    tokenize_pair,
    tokenize_rows,
    truncate_pair,
)
from cai_pipeline.train.formats import read_split

from .conftest import chat_pair, msg, write_split

SYSTEM = "<|im_start|>system\n"


def _row(**kw) -> dict:
    return {"_file": "mem.parquet", **kw}


def test_completion_is_exactly_the_assistant_turn(tokenizer):
    """Prompt = the template's rendering with the generation prompt; completion = the assistant's content plus
    <|im_end|>; one BOS, one (default) system prompt, no template newline after the end token."""
    row = _row(**chat_pair("Hi", "Hello there", "Go away"))
    p, c, r, is_prefix = tokenize_pair(tokenizer, row, end_token_ids(tokenizer))
    assert is_prefix
    expected_prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(p) == expected_prompt
    assert tokenizer.decode(c) == "Hello there<|im_end|>"
    assert tokenizer.decode(r) == "Go away<|im_end|>"
    assert c[-1] == r[-1] == tokenizer.eos_token_id
    full = tokenizer.decode(p + c)
    assert full.count(SYSTEM) == 1
    assert p[0] == tokenizer.bos_token_id and p[1] != tokenizer.bos_token_id
    # The same sequence the template renders for the whole conversation, minus its trailing newline.
    whole = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
    assert whole == full + "\n"


def test_own_system_prompt_and_multi_turn_prompt(tokenizer):
    prompt = [msg("system", "Be terse."), msg("user", "One?"), msg("assistant", "Two."), msg("user", "Three?")]
    row = _row(prompt=prompt, chosen=[msg("assistant", "Four.")], rejected=[msg("assistant", "Five.")])
    p, c, _, _ = tokenize_pair(tokenizer, row, end_token_ids(tokenizer))
    text = tokenizer.decode(p)
    assert text.count(SYSTEM) == 1 and "Be terse." in text and "SmolLM" not in text
    assert text.endswith("<|im_start|>user\nThree?<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(c) == "Four.<|im_end|>"


def test_plain_text_rows_get_eos(tokenizer):
    row = _row(prompt="Q: two plus two?\nA:", chosen=" four", rejected=" five")
    p, c, r, _ = tokenize_pair(tokenizer, row, end_token_ids(tokenizer))
    assert tokenizer.decode(p) == "Q: two plus two?\nA:"
    assert tokenizer.decode(c) == " four<|im_end|>" and tokenizer.decode(r) == " five<|im_end|>"


def test_truncate_pair_keeps_prompt_end_and_completion_start():
    """max_length 10, max_prompt_length 4: prompt 8 → its last 4; room 6 → completions' first 6."""
    p, c, r = list(range(8)), list(range(100, 109)), list(range(200, 203))
    tp, tc, tr, cut_p, cut_c = truncate_pair(p, c, r, 10, 4)
    assert tp == [4, 5, 6, 7] and tc == list(range(100, 106)) and tr == [200, 201, 202]
    assert cut_p and cut_c
    # A pair that fits is left alone even when its prompt is longer than max_prompt_length.
    assert truncate_pair(list(range(6)), [1], [2], 10, 4) == (list(range(6)), [1], [2], False, False)
    # Only the prompt needs cutting.
    assert truncate_pair(list(range(8)), [1, 2, 3], [4], 8, 5)[3:] == (True, False)


def test_truncation_counts(tokenizer):
    long = " ".join(["word"] * 200)
    rows = [_row(**chat_pair("short", "short answer", "nope")), _row(**chat_pair(long, "ok", "no")),
            _row(**chat_pair("short", long, "no"))]
    pairs = tokenize_rows(rows, tokenizer, max_length=64, max_prompt_length=32, end_ids=end_token_ids(tokenizer))
    assert pairs.counts == {"rows": 3, "truncated_prompt": 1, "truncated_completion": 1, "prompt_not_prefix": 0}
    for i in range(3):
        assert len(pairs.prompt[i]) + max(len(pairs.chosen[i]), len(pairs.rejected[i])) <= 64
    assert len(pairs.prompt[1]) == 32
    # The cut prompt keeps its end: the generation prompt is still there.
    assert tokenizer.decode(pairs.prompt[1]).endswith("<|im_start|>assistant\n")


def test_block_mask_by_hand():
    """Row [p p c c r] + one pad: rejected (4) sees prompt (0, 1) and itself, not chosen (2, 3); pad sees itself."""
    seg = torch.tensor([[0, 0, 1, 1, 2, -1]])
    m = block_mask(seg)[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0, 0],
                 [1, 1, 1, 0, 0, 0],
                 [1, 1, 1, 1, 0, 0],
                 [1, 1, 0, 0, 1, 0],
                 [0, 0, 0, 0, 0, 1]]


def test_collate_scores_exactly_the_completion_tokens(tokenizer):
    """Each scored label is the token after its source position in the unpacked sequence (prompt + completion),
    and the labels decode to exactly the assistant turns."""
    rows = [_row(**chat_pair("Hi", "Hello there", "Go away")), _row(**chat_pair("A longer question here?", "Yes", "No no no no"))]
    pairs = tokenize_rows(rows, tokenizer, max_length=256, max_prompt_length=128, end_ids=end_token_ids(tokenizer))
    batch = collate_pairs([pairs[i] for i in range(2)], pad_id=tokenizer.pad_token_id)
    B, L = batch["input_ids"].shape
    flat_ids, flat_pos = batch["input_ids"].flatten(), batch["position_ids"].flatten()
    for j in range(2 * B):
        b = j % B
        keep = batch["completion_mask"][j]
        labels = batch["labels"][j][keep]
        completion = pairs.chosen[b] if j < B else pairs.rejected[b]
        assert labels.tolist() == completion.tolist()
        # the source of the first label is the prompt's last token, at position len(prompt) - 1
        src = batch["score_index"][j][keep]
        assert flat_pos[src[0]].item() == len(pairs.prompt[b]) - 1
        assert (flat_pos[src[1:]] == flat_pos[src[:-1]] + 1).all()  # consecutive positions
        assert (flat_ids[src[1:] + 1] == labels[1:]).all()  # within a completion: the next packed token
        if j < B:  # chosen follows the prompt directly; rejected's first token is scored from the prompt's end
            assert flat_ids[src[0] + 1] == labels[0]
        assert (src // L == b).all()
    assert batch["n_tokens"].item() == sum(len(pairs.prompt[i]) + len(pairs.chosen[i]) + len(pairs.rejected[i]) for i in range(2))
    assert tokenizer.decode(batch["labels"][0][batch["completion_mask"][0]]) == "Hello there<|im_end|>"


def test_find_splits_and_errors(tmp_path):
    write_split(tmp_path / "d", "train", [chat_pair("a", "b", "c")])
    write_split(tmp_path / "d", "test", [chat_pair("a", "b", "c")])
    splits = find_splits(tmp_path / "d")
    assert [p.name for p in splits["train"]] == ["train-00000.parquet"]
    assert [p.name for p in splits["test"]] == ["test-00000.parquet"]
    single = find_splits(splits["train"][0])
    assert single["train"] == splits["train"] and single["test"] == []
    with pytest.raises(UserError, match="does not exist"):
        find_splits(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train"):
        find_splits(tmp_path / "empty")


def test_missing_column_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train-0.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "chosen": "b"}]), path)
    with pytest.raises(UserError, match=r"train-0.parquet: missing column\(s\) rejected"):
        read_split([path], "preference")
    with pytest.raises(UserError, match=r"train-0.parquet: missing column\(s\) messages"):
        read_split([path], "sft")


def test_mixed_row_types_are_a_user_error(tokenizer):
    row = _row(prompt="plain", chosen=[msg("assistant", "x")], rejected=[msg("assistant", "y")])
    with pytest.raises(UserError, match="mem.parquet"):
        tokenize_pair(tokenizer, row, end_token_ids(tokenizer))


def test_fingerprint_changes_with_tokens(tokenizer):
    rows = [_row(**chat_pair("Hi", "Hello", "Bye"))]
    ends = end_token_ids(tokenizer)
    a = tokenize_rows(rows, tokenizer, max_length=64, max_prompt_length=32, end_ids=ends)
    b = tokenize_rows(rows, tokenizer, max_length=64, max_prompt_length=32, end_ids=ends)
    c = tokenize_rows(rows, tokenizer, max_length=8, max_prompt_length=4, end_ids=ends)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert isinstance(a.prompt[0], np.ndarray)
