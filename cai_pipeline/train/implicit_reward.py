"""Implicit reward: does a DPO/IPO-trained model agree with the preferences it learned, on pairs it never saw?

A DPO policy π defines a reward r(x, y) = β·log π(y|x)/π_ref(y|x) (Rafailov et al. 2023, arXiv 2305.18290);
RewardBench (Lambert et al. 2024, arXiv 2403.13787) scores a DPO model as a reward model by whether

    margin = β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]  >  0

for a preferred y_w and a dispreferred y_l. IPO's objective is on length-normalised log-probs (losses.ipo_loss
as the trainer calls it), so for IPO each log-prob is divided by its completion's token count first.

The base model has no reference to be measured against (its ratio to itself is 0 on every pair), so its
number is RewardBench's reference-free score: log π_base(y_w|x) − log π_base(y_l|x) > 0, whether the base model
already found the chosen response likelier. A tie (margin exactly 0) counts half.

Log-probs are computed as the trainer computes them (data.tokenize_rows → collate_pairs → PairScorer), so the
numbers are the trainer's own: the same template, truncation and completion tokens.
"""

from __future__ import annotations

import torch

from cai_pipeline.train.data import collate_pairs, end_token_ids, tokenize_rows
from cai_pipeline.train.modeling import MODEL_INPUTS, PairScorer, load_policy


def completion_logps(path: str, rows: list[dict], *, max_length: int, max_prompt_length: int, key: str,
                     tokenizer_path: str | None = None, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(logps, n_tokens), each (N, 2): log π(chosen|x), log π(rejected|x) summed over completion tokens, and
    the completions' token counts, for rows {prompt, chosen, rejected} under the model at `path`. Tokenised
    with `tokenizer_path`'s tokenizer (the policy's, so both models score the same tokens)."""
    from transformers import AutoTokenizer

    tokenizer, lm = load_policy(path, key)
    if tokenizer_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    pairs = tokenize_rows([{**r, "_file": r.get("_file", "")} for r in rows], tokenizer, max_length=max_length,
                          max_prompt_length=max_prompt_length, end_ids=end_token_ids(tokenizer))
    if pairs.rejects or len(pairs) != len(rows):
        raise ValueError(f"{len(rows) - len(pairs)} pair(s) tokenise to nothing: {pairs.rejects[0]['detail']}")
    scorer = PairScorer(lm).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logps, counts = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch = collate_pairs([pairs[i] for i in range(start, min(start + batch_size, len(pairs)))], pad)
            lp, n = scorer(**{k: batch[k] for k in MODEL_INPUTS})
            b = lp.shape[0] // 2
            logps.append(torch.stack([lp[:b], lp[b:]], dim=1))
            counts.append(torch.stack([n[:b], n[b:]], dim=1))
    return torch.cat(logps).double(), torch.cat(counts).double()


def _normalised(logps: torch.Tensor, counts: torch.Tensor, loss: str) -> torch.Tensor:
    return logps / counts.clamp(min=1) if loss == "ipo" else logps


def implicit_margins(policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor, *, beta: float,
                     loss: str) -> torch.Tensor:
    """β·((pc − rc) − (pr − rr)) per pair, (N,); policy, reference, counts: (N, 2) as completion_logps gives."""
    p, r = _normalised(policy, counts, loss), _normalised(reference, counts, loss)
    return beta * ((p[:, 0] - r[:, 0]) - (p[:, 1] - r[:, 1]))


def reference_free_margins(logps: torch.Tensor, counts: torch.Tensor, *, loss: str) -> torch.Tensor:
    """log π(chosen) − log π(rejected) per pair, (N,) (length-normalised for IPO)."""
    p = _normalised(logps, counts, loss)
    return p[:, 0] - p[:, 1]


def agreement(margins: torch.Tensor) -> list[float]:
    """Per pair: 1 when the margin favours the chosen response, 0 when it favours the rejected, ½ on a tie."""
    return [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins.tolist()]
