"""SFT data: conversations tokenised with the model's chat template, the loss on assistant tokens only.

A conversation is rendered once, whole, through the chat template (one BOS, one system prompt, exactly what an
engine sends at generation time; message text tokenised as text, never as control tokens). An assistant turn's tokens are found by rendering the turns before it with
the generation prompt: the turn starts where that rendering ends and runs to its end token, which is trained
on (the model must learn to stop); the template's newline after it is not (the model never generates it).

`sft_turns`: "last" trains on the conversation's last assistant turn only: in SL-CAI data that is the final
revision, the only text the constitution shaped; earlier assistant turns in a multi-turn prompt are the
original conversation's (in hh-rlhf, the red-team model's own, possibly harmful, replies). "all" trains on
every assistant turn, as for ordinary chat SFT data (TRL's `assistant_only_loss`).

Packing for the scorer: one row per conversation, causal attention, and per trained token the position whose
output predicts it, in the same tensors `collate_pairs` makes — so modeling.PairScorer scores both.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from cai_pipeline.engines.chat import conversation_ids
from cai_pipeline.records import make_reject
from cai_pipeline.train.data import block_mask, common_prefix, cut_after_end


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> list[int]:
    # message text never becomes a control token (engines/chat.py), as for preference pairs and the engines
    return conversation_ids(tokenizer, messages, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list[dict], end_ids: set[int], turns: str):
    """(ids, [(start, end), ...], prompt_is_prefix): the conversation's token ids and the half-open spans of the
    trained assistant turns, each up to and including its end token; ids stop after the last span."""
    full = _render(tokenizer, messages, False)
    wanted = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans, is_prefix = [], True
    for i in wanted[-1:] if turns == "last" else wanted:
        before = _render(tokenizer, messages[:i], True)
        start = common_prefix(full, before)
        is_prefix &= start == len(before)
        through = common_prefix(full, _render(tokenizer, messages[: i + 1], False))  # the turn as rendered
        end = start + len(cut_after_end(full[start:through], end_ids))
        if end > start:
            spans.append((start, end))
    return full[: spans[-1][1]] if spans else full, spans, is_prefix


def truncate_conversation(ids: list[int], trained: list[bool], first: int, max_length: int,
                          max_prompt_length: int) -> tuple[list[int], list[bool], bool, bool]:
    """As for pairs: keep at most max_prompt_length tokens before the first trained token (their end), then
    the first max_length tokens. Returns (ids, trained, prompt_truncated, completion_truncated)."""
    if len(ids) <= max_length:
        return ids, trained, False, False
    cut_prompt = first > max_prompt_length
    if cut_prompt:
        ids, trained = ids[first - max_prompt_length :], trained[first - max_prompt_length :]
    cut_completion = len(ids) > max_length
    return ids[:max_length], trained[:max_length], cut_prompt, cut_completion


@dataclass
class SFTSet:
    """Tokenised conversations of one split: token ids and, per token, whether it is a trained label."""

    ids: list[np.ndarray] = field(default_factory=list)
    trained: list[np.ndarray] = field(default_factory=list)  # bool, same length as ids
    counts: dict[str, int] = field(default_factory=lambda: {
        "rows": 0, "truncated_prompt": 0, "truncated_completion": 0, "prompt_not_prefix": 0})
    rejects: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"idx": i, "ids": self.ids[i], "trained": self.trained[i]}

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for ids, trained in zip(self.ids, self.trained):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(ids.tobytes())
            h.update(np.packbits(trained).tobytes())
        return h.hexdigest()


def tokenize_conversations(rows: list[dict], tokenizer, *, max_length: int, max_prompt_length: int,
                           end_ids: set[int], turns: str = "last") -> SFTSet:
    out = SFTSet()
    for row in rows:
        ids, spans, is_prefix = assistant_spans(tokenizer, row["messages"], end_ids, turns)
        if not spans or spans[0][0] == 0:  # nothing to train on, or nothing to predict its first token from
            out.rejects.append(make_reject("train", row["_file"], "no_trainable_tokens", f"{row['_file']}: the "
                                           "assistant turn tokenises to nothing after its prompt", row))
            continue
        trained = [False] * len(ids)
        for start, end in spans:
            trained[start:end] = [True] * (end - start)
        ids, trained, cut_p, cut_c = truncate_conversation(ids, trained, spans[0][0], max_length, max_prompt_length)
        for name, flag in (("truncated_prompt", cut_p), ("truncated_completion", cut_c),
                           ("prompt_not_prefix", not is_prefix)):
            out.counts[name] += int(flag)
        out.counts["rows"] += 1
        out.ids.append(np.asarray(ids, dtype=np.int64))
        out.trained.append(np.asarray(trained, dtype=bool))
    return out


def collate_conversations(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """B conversations → B right-padded causal rows, in collate_pairs' tensors with one scored row each:

    input_ids, position_ids: (B, L); attention_mask: (B, 1, L, L) bool (causal; padding sees only itself);
    score_index, labels, completion_mask: (B, T) — label t of row b is predicted by flat output b·L + t − 1;
    idx: (B,); n_tokens: () real tokens in the rows.
    """
    B, L = len(examples), max(len(e["ids"]) for e in examples)
    T = max(int(e["trained"].sum()) for e in examples)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    seg = torch.full((B, L), -1, dtype=torch.long)
    index = torch.zeros((B, T), dtype=torch.long)
    labels = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.bool)
    for b, e in enumerate(examples):
        n, where = len(e["ids"]), np.flatnonzero(e["trained"])
        ids[b, :n], seg[b, :n] = torch.from_numpy(e["ids"]), 0
        index[b, : len(where)] = torch.from_numpy(where - 1) + b * L
        labels[b, : len(where)] = torch.from_numpy(e["ids"][where])
        mask[b, : len(where)] = True
    return {"input_ids": ids, "position_ids": torch.arange(L).expand(B, L).contiguous(),
            "attention_mask": block_mask(seg), "score_index": index, "labels": labels, "completion_mask": mask,
            "idx": torch.tensor([e["idx"] for e in examples]),
            "n_tokens": torch.tensor(sum(len(e["ids"]) for e in examples))}
