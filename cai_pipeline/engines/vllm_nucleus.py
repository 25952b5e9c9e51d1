"""Our sort-free top-p (nucleus.py) as a vLLM logits processor, for vLLM on CPU.

The engine passes top_p in `SamplingParams.extra_args[KEY]` and top_p=1 to vLLM. vLLM runs argmax-invariant
processors after the temperature and before its own top-k/top-p step, which then has nothing to do.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from cai_pipeline.engines.nucleus import KEY, mask_outside_nucleus_


class Nucleus(LogitsProcessor):
    """Top-p for the requests that carry `extra_args[KEY]`."""

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
