"""Preference data for the trainer: find the files, tokenise with the model's chat template, pack pairs.
(Reading the layouts people have is formats.py; SFT conversations are sft.py.)

A pair is tokenised as two full chat-templated conversations (prompt + chosen, prompt + rejected) rendered in
one piece, so the template sees the whole conversation: one BOS, one (default) system prompt, and the
assistant's end token inside the completion. The prompt is the template's rendering with the generation
prompt; the completion is everything after it up to and including the last end token (the template's trailing
newline is not something the model generates, so it is not trained on).

Packing: chosen and rejected share their prompt, so one row holds [prompt | chosen | rejected] and a
block mask keeps the rejected tokens from seeing the chosen ones; the prompt is encoded once per pair.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cai_pipeline.engines.chat import conversation_ids, end_token_ids
from cai_pipeline.errors import UserError
from cai_pipeline.records import make_reject
from cai_pipeline.train.formats import is_data_file

__all__ = ["PairSet", "collate_pairs", "end_token_ids", "find_splits", "tokenize_rows"]

COLUMNS = ("prompt", "chosen", "rejected")


# ---------------------------------------------------------------------------------------------- reading


def find_splits(path: Path) -> dict[str, list[Path]]:
    """{"train": [...], "test": [...]}: a file is the train split; a folder gives train-*/test-* files (or
    every data file but test-* as train when none is named so). Parquet and JSON Lines (formats.SUFFIXES)."""
    if path.is_file():
        return {"train": [path], "test": []}
    if not path.is_dir():
        raise UserError(f"train.data: {path} does not exist; run the pipeline's export stage first or set "
                        "train.data to a Parquet or JSONL folder or file")
    files = sorted(f for f in path.rglob("*") if f.is_file() and is_data_file(f) and not f.name.startswith("."))
    train = [f for f in files if f.name.startswith("train-")] or [f for f in files if not f.name.startswith("test-")]
    if not train:
        raise UserError(f"train.data: {path} holds no train-*.parquet (or other .parquet/.jsonl) files; "
                        "point train.data at a dataset folder or file")
    return {"train": train, "test": [f for f in files if f.name.startswith("test-")]}


def _kind(value) -> str:
    if isinstance(value, str):
        return "text"
    if isinstance(value, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value):
        return "chat"
    return "bad"


def check_row(row: dict) -> str:
    """"chat" (lists of {role, content}) or "text" (plain strings); formats.read_split normalises every layout
    to one of the two, so anything else reaching here is a caller's mistake."""
    kinds = {_kind(row[c]) for c in COLUMNS}
    if len(kinds) != 1 or "bad" in kinds:
        raise UserError(f"{row['_file']}: prompt/chosen/rejected must all be message lists [{{role, content}}] "
                        "or all plain strings; found a row that mixes them or has other types")
    return kinds.pop()


# ---------------------------------------------------------------------------------------------- tokenising


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cut_after_end(ids: list[int], end_ids: set[int]) -> list[int]:
    """Keep the completion up to and including its last end token (drop the template's trailing text)."""
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] in end_ids:
            return ids[: i + 1]
    return ids


def encode_text(tokenizer, text: str, special: bool) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def tokenize_pair(tokenizer, row: dict, end_ids: set[int]) -> tuple[list[int], list[int], list[int], bool]:
    """(prompt_ids, chosen_ids, rejected_ids, prompt_is_prefix) for one row.

    Chat rows render prompt+completion through the chat template as one sequence (template text carries its
    own special tokens, so the tokenizer adds none). Text rows are raw text, as in TRL: the tokenizer's own
    BOS if it adds one, and the EOS appended when missing. If the template renders the prompt differently on
    its own (prompt_is_prefix False), the completion starts where the two renderings diverge.
    """
    if check_row(row) == "chat":  # message text never becomes a control token (engines/chat.py)
        prompt = conversation_ids(tokenizer, row["prompt"], add_generation_prompt=True)
        fulls = [conversation_ids(tokenizer, row["prompt"] + row[c], add_generation_prompt=False) for c in COLUMNS[1:]]
    else:
        prompt = encode_text(tokenizer, row["prompt"], True)
        fulls = [encode_text(tokenizer, row["prompt"] + row[c], True) for c in COLUMNS[1:]]
        fulls = [f if f and f[-1] == tokenizer.eos_token_id else f + [tokenizer.eos_token_id] for f in fulls]
    n = min(common_prefix(prompt, f) for f in fulls)
    chosen, rejected = (cut_after_end(f[n:], end_ids) for f in fulls)
    return prompt[:n], chosen, rejected, n == len(prompt)


def truncate_pair(p: list[int], c: list[int], r: list[int], max_length: int, max_prompt_length: int):
    """Fit prompt+chosen and prompt+rejected into max_length: first keep the prompt's last max_prompt_length
    tokens (the turn being answered is at its end), then keep the completions' first tokens.
    Returns (p, c, r, prompt_truncated, completion_truncated)."""
    if len(p) + max(len(c), len(r)) <= max_length:
        return p, c, r, False, False
    cut_prompt = len(p) > max_prompt_length
    if cut_prompt:
        p = p[-max_prompt_length:]
    room = max_length - len(p)
    cut_completion = max(len(c), len(r)) > room
    return p, c[:room], r[:room], cut_prompt, cut_completion


@dataclass
class PairSet:
    """Tokenised pairs of one split; `counts` goes into the metrics (truncated rows, template mismatches)."""

    prompt: list[np.ndarray] = field(default_factory=list)
    chosen: list[np.ndarray] = field(default_factory=list)
    rejected: list[np.ndarray] = field(default_factory=list)
    target: list[float] = field(default_factory=list)  # p_chosen, NaN where the row has none
    counts: dict[str, int] = field(default_factory=lambda: {
        "rows": 0, "truncated_prompt": 0, "truncated_completion": 0, "prompt_not_prefix": 0})
    rejects: list[dict] = field(default_factory=list)  # rows that tokenise to nothing trainable

    def __len__(self) -> int:
        return len(self.prompt)

    def __getitem__(self, i: int) -> dict:
        return {"idx": i, "prompt": self.prompt[i], "chosen": self.chosen[i], "rejected": self.rejected[i],
                "target": self.target[i]}

    def fingerprint(self) -> str:
        """sha256 of the token ids in order: changes with the data, the tokenizer, the template or truncation."""
        h = hashlib.sha256()
        for arrays in zip(self.prompt, self.chosen, self.rejected):
            for a in arrays:
                h.update(len(a).to_bytes(4, "little"))
                h.update(a.tobytes())
        return h.hexdigest()


def tokenize_rows(rows: list[dict], tokenizer, *, max_length: int, max_prompt_length: int,
                  end_ids: set[int]) -> PairSet:
    out = PairSet()
    for row in rows:
        p, c, r, is_prefix = tokenize_pair(tokenizer, row, end_ids)
        if not p:  # nothing to predict the first completion token from
            out.rejects.append(make_reject("train", row["_file"], "empty_prompt", f"{row['_file']}: the prompt "
                                           "tokenises to nothing (and the tokenizer adds no BOS)", row))
            continue
        p, c, r, cut_p, cut_c = truncate_pair(p, c, r, max_length, max_prompt_length)
        for name, flag in (("truncated_prompt", cut_p), ("truncated_completion", cut_c),
                           ("prompt_not_prefix", not is_prefix)):
            out.counts[name] += int(flag)
        out.counts["rows"] += 1
        out.prompt.append(np.asarray(p, dtype=np.int64))
        out.chosen.append(np.asarray(c, dtype=np.int64))
        out.rejected.append(np.asarray(r, dtype=np.int64))
        p_chosen = row.get("p_chosen")
        out.target.append(math.nan if p_chosen is None else float(p_chosen))
    return out


# ---------------------------------------------------------------------------------------------- packing


def _pack_row(p: np.ndarray, c: np.ndarray, r: np.ndarray):
    """One pair as one row: ids, position ids, segment ids (0 prompt, 1 chosen, 2 rejected) and, per scored
    token, the position whose output predicts it. The rejected completion restarts its positions after the
    prompt, and its first token is predicted from the prompt's last position, as if it followed the prompt."""
    P, C, R = len(p), len(c), len(r)
    ids = np.concatenate([p, c, r])
    pos = np.concatenate([np.arange(P + C), np.arange(P, P + R)])
    seg = np.concatenate([np.zeros(P), np.ones(C), np.full(R, 2)]).astype(np.int64)
    src_c = np.arange(P - 1, P + C - 1)
    src_r = np.concatenate([[P - 1], np.arange(P + C, P + C + R - 1)])[:R]
    return ids, pos, seg, src_c, src_r


def block_mask(seg: torch.Tensor) -> torch.Tensor:
    """(B, L) segment ids, -1 for padding → (B, 1, L, L) bool, True where query q may attend to key k.

    Causal, except that rejected queries (2) never see chosen keys (1); padding sees only itself, so no row of
    the mask is empty (an all-masked row would turn the attention output into NaN).
    """
    L = seg.shape[1]
    q = torch.arange(L).view(1, L, 1)
    k = torch.arange(L).view(1, 1, L)
    sq, sk = seg.unsqueeze(2), seg.unsqueeze(1)
    allowed = (k <= q) & (sk >= 0) & (sq >= 0) & ~((sq == 2) & (sk == 1))
    return (allowed | (q == k)).unsqueeze(1)


def collate_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pack B pairs into B rows (right-padded) plus the index tensors that pick each completion's scores.

    input_ids, position_ids: (B, L); attention_mask: (B, 1, L, L) bool;
    score_index: (2B, T) flat index into the (B·L) outputs — rows 0..B-1 chosen, B..2B-1 rejected;
    labels, completion_mask: (2B, T); idx: (B,) dataset positions; target: (B,) p_chosen or NaN;
    n_tokens: () real (unpadded) tokens in the rows.
    """
    packed = [_pack_row(e["prompt"], e["chosen"], e["rejected"]) for e in examples]
    B, L = len(packed), max(len(x[0]) for x in packed)
    T = max(max(len(x[3]), len(x[4])) for x in packed)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)
    index = torch.zeros((2 * B, T), dtype=torch.long)
    labels = torch.zeros((2 * B, T), dtype=torch.long)
    mask = torch.zeros((2 * B, T), dtype=torch.bool)
    for b, (row_ids, row_pos, row_seg, src_c, src_r) in enumerate(packed):
        n = len(row_ids)
        ids[b, :n], pos[b, :n], seg[b, :n] = (torch.from_numpy(a) for a in (row_ids, row_pos, row_seg))
        for j, (src, toks) in ((b, (src_c, examples[b]["chosen"])), (B + b, (src_r, examples[b]["rejected"]))):
            index[j, : len(src)] = torch.from_numpy(src) + b * L
            labels[j, : len(src)] = torch.from_numpy(toks)
            mask[j, : len(src)] = True
    return {"input_ids": ids, "position_ids": pos, "attention_mask": block_mask(seg), "score_index": index,
            "labels": labels, "completion_mask": mask, "idx": torch.tensor([e["idx"] for e in examples]),
            "target": torch.tensor([e["target"] for e in examples], dtype=torch.float32),
            "n_tokens": torch.tensor(sum(len(x[0]) for x in packed))}
