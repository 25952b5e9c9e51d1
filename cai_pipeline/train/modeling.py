"""The policy: load it, score packed preference pairs with it, save it as a plain Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

from cai_pipeline.errors import UserError
from cai_pipeline.train.config import LoraConfig
from cai_pipeline.train.losses import sequence_logps

# Logit elements per LM-head chunk (fp32: 64 MiB). Only one chunk of logits is alive at a time.
_HEAD_CHUNK_ELEMENTS = 1 << 24
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_policy(path: str, key: str = "train.model"):
    """(tokenizer, model) in fp32: the optimizer keeps full-precision master weights; bf16 comes from autocast.
    sdpa attention, because the packed pairs need a custom (block) attention mask. `key`: the config key that
    named the model, for the error message."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{key}: cannot load {path!r} ({first}); give a local Hugging Face model folder") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    disable_dropout(model)
    return tokenizer, model


def disable_dropout(model: torch.nn.Module) -> None:
    """DPO-style losses compare log-probs of the same weights across passes (policy vs its cached reference,
    chosen vs rejected); dropout would make them noisy functions of the weights (Rafailov et al. turn it off)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def add_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def _head_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
    """The LM head in fp32 even under bf16 autocast: bf16 logits are quantised to ~0.1 nat, which summed over a
    completion makes the policy and its cached reference disagree by tenths of a nat at step 0."""
    with torch.autocast(hidden.device.type, enabled=False):
        logits = torch.nn.functional.linear(hidden.float(), head.weight.float(),
                                            None if head.bias is None else head.bias.float())
    return sequence_logps(logits, labels, mask)


class PairScorer(torch.nn.Module):
    """Packed pairs (data.collate_pairs) → per-completion log-prob sums (2B,) and token counts (2B,); SFT rows
    (sft.collate_conversations) are the same tensors with one scored row per conversation → (B,), (B,).

    One module around the causal LM, so that what accelerate wraps (DDP, FSDP) is the whole computation. It
    runs the decoder once over the packed rows, gathers the hidden states that predict completion tokens, and
    applies the LM head only there, a few rows at a time under activation checkpointing: prompt positions never
    reach the (vocab-sized) head, and the backward pass recomputes one chunk of logits instead of keeping all.
    """

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, position_ids, attention_mask, score_index, labels, completion_mask):
        core = self.lm.get_base_model() if hasattr(self.lm, "peft_config") else self.lm
        hidden = core.get_decoder()(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        picked = hidden.flatten(0, 1)[score_index]  # (2B, T, H)
        head = core.get_output_embeddings()
        rows = max(1, _HEAD_CHUNK_ELEMENTS // max(1, picked.shape[1] * head.weight.shape[0]))
        parts = []
        for s in range(0, picked.shape[0], rows):
            args = (head, picked[s : s + rows], labels[s : s + rows], completion_mask[s : s + rows])
            grad = torch.is_grad_enabled()
            parts.append(checkpoint(_head_logps, *args, use_reentrant=False) if grad else _head_logps(*args))
        return torch.cat(parts), completion_mask.sum(-1)


MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask", "score_index", "labels", "completion_mask")


def save_checkpoint(lm, tokenizer, out: Path, save_dtype: str | None) -> Path:
    """A plain Hugging Face folder (safetensors, config, tokenizer, chat template), LoRA merged in. Written to a
    sibling folder and swapped in, so a crash never leaves half a checkpoint where an engine would load it."""
    if hasattr(lm, "peft_config"):
        lm = lm.merge_and_unload()
    from cai_pipeline.store import atomic_folder

    if save_dtype is not None:
        lm = lm.to(_DTYPES[save_dtype])
    return atomic_folder(out, lambda tmp: (lm.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
