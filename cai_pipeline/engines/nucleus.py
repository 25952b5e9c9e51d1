"""Nucleus (top-p) sampling without sorting the vocabulary.

Top-p is usually implemented by sorting every row's logits over the whole vocabulary at each decode step;
for 64 sequences × 49k tokens that sort is ~40% of a vLLM decode step on our 2-core machine, and transformers
sorts the same way (BENCHMARKS.md). The nucleus almost always lies among the few hundred most likely tokens,
so we find it with a partial `topk` and fall back to a full sort only for a row whose top k do not reach p.
Same rule as vLLM's and transformers': a token is kept when the tokens ranked above it hold less than p of
the mass (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration"). One difference: tokens
tied with the last one kept are all kept, where a sort keeps some of them by position. With bf16 logits such
ties are common in the tail, so with the same seed our samples and a sorting sampler's part ways now and then.

The engines use it through a logits processor each (vllm_nucleus.py, and hf.py's `TemperatureNucleus`) and
switch their own top-p off.
"""

from __future__ import annotations

import torch

KEY = "cai_top_p"  # where a vLLM request carries its p (SamplingParams.extra_args)


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
