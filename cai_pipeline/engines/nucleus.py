"""Nucleus (top-p) sampling for vLLM on CPU without sorting the vocabulary.

vLLM's CPU sampler implements top-p by sorting every row's logits over the whole vocabulary at each decode
step: for 64 sequences × 49k tokens that sort is ~40% of a step on our 2-core machine (BENCHMARKS.md). The
nucleus almost always lies among the few hundred most likely tokens, so we find it with a partial `topk`
and fall back to a full sort only for a row whose top k do not reach p. Same rule as vLLM's: a token is kept
when the tokens ranked above it hold less than p of the mass (Holtzman et al., 2020, "The Curious Case of
Neural Text Degeneration").

The engine passes top_p in `SamplingParams.extra_args` and top_p=1 to vLLM; this processor runs after the
temperature is applied and before vLLM's own top-k/top-p step, which then has nothing to do.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

KEY = "cai_top_p"  # engines/vllm.py names it too, so that it need not import this module (and vLLM)


def nucleus_floor(probs: torch.Tensor, top_p: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the probability of the least likely token still in the nucleus."""
    top = probs.topk(min(k, probs.shape[-1]), dim=-1).values  # sorted, most likely first
    mass = top.cumsum(dim=-1)
    kept = ((mass - top) < top_p[:, None]).sum(dim=-1)  # the first token always: nothing ranks above it
    floor = top.gather(1, (kept - 1)[:, None])
    short = mass[:, -1] < top_p  # the nucleus reaches past the top k: look at the whole row
    if short.any() and k < probs.shape[-1]:
        floor[short] = nucleus_floor(probs[short], top_p[short], probs.shape[-1])
    return floor


def mask_outside_nucleus_(logits: torch.Tensor, top_p: torch.Tensor, k: int = 1024) -> torch.Tensor:
    """Set every token outside each row's nucleus to -inf, in place."""
    probs = logits.float().softmax(dim=-1)
    return logits.masked_fill_(probs < nucleus_floor(probs, top_p.to(probs.dtype), k), float("-inf"))


class Nucleus(LogitsProcessor):
    """vLLM logits processor: top-p for the requests that carry `extra_args[KEY]`."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.top_p: dict[int, float] = {}  # batch row -> p

    def is_argmax_invariant(self) -> bool:
        return True  # the most likely token is always kept

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.top_p, batch_update, lambda params, _, __: (params.extra_args or {}).get(KEY))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.top_p:
            return logits
        rows = sorted(self.top_p)
        top_p = torch.tensor([self.top_p[r] for r in rows])
        if len(rows) == logits.shape[0]:
            return mask_outside_nucleus_(logits, top_p)
        index = torch.tensor(rows)
        logits[index] = mask_outside_nucleus_(logits[index], top_p)
        return logits
