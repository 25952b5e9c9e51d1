"""Packed scoring equals scoring each conversation on its own; checkpoints are plain HF folders."""

from __future__ import annotations

import pytest
import torch

from cai_pipeline.train import modeling
from cai_pipeline.train.data import collate_pairs, end_token_ids, tokenize_rows
from cai_pipeline.train.modeling import MODEL_INPUTS, PairScorer, add_lora, load_policy, save_checkpoint

from .conftest import chat_pair


def _pairs(tokenizer):
    rows = [{"_file": "m", **chat_pair("Hi", "Hello there, friend.", "Go")},
            {"_file": "m", **chat_pair("What is the capital of France, please?", "Paris.", "I would rather not say, sorry.")},
            {"_file": "m", **chat_pair("Count to three", "1 2 3", "3 2 1 0 -1")}]
    return tokenize_rows(rows, tokenizer, max_length=128, max_prompt_length=64, end_ids=end_token_ids(tokenizer))


def _naive_logps(lm, prompt, completion) -> torch.Tensor:
    """log π(completion | prompt) the textbook way: one unpadded sequence, full log_softmax."""
    ids = torch.tensor([list(prompt) + list(completion)])
    logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return logp[len(prompt) - 1 :].gather(-1, targets[len(prompt) - 1 :, None]).sum()


@pytest.mark.parametrize("head_chunk", [1 << 24, 1])
def test_packed_pairs_score_like_separate_sequences(tiny_model, monkeypatch, head_chunk):
    monkeypatch.setattr(modeling, "_HEAD_CHUNK_ELEMENTS", head_chunk)
    tokenizer, lm = load_policy(tiny_model)
    pairs = _pairs(tokenizer)
    batch = collate_pairs([pairs[i] for i in range(len(pairs))], tokenizer.pad_token_id)
    logps, counts = PairScorer(lm)(**{k: batch[k] for k in MODEL_INPUTS})
    B = len(pairs)
    naive = [_naive_logps(lm, pairs.prompt[i], pairs.chosen[i]) for i in range(B)]
    naive += [_naive_logps(lm, pairs.prompt[i], pairs.rejected[i]) for i in range(B)]
    assert torch.allclose(logps, torch.stack(naive), atol=1e-5)
    assert counts.tolist() == [len(pairs.chosen[i]) for i in range(B)] + [len(pairs.rejected[i]) for i in range(B)]
    # and the gradients agree: packing changes nothing but the cost
    g_packed = torch.autograd.grad(logps.sum(), list(lm.parameters()), allow_unused=True)
    g_naive = torch.autograd.grad(torch.stack(naive).sum(), list(lm.parameters()), allow_unused=True)
    for a, b in zip(g_packed, g_naive):
        assert torch.allclose(a, b, atol=1e-5)


def test_lora_checkpoint_is_merged_plain_folder(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer, lm = load_policy(tiny_model)
    from cai_pipeline.train.config import LoraConfig

    lm = add_lora(lm, LoraConfig(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():  # a non-zero adapter, so merging changes the weights
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    out = save_checkpoint(lm, tokenizer, tmp_path / "ckpt", "bfloat16")
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files
    assert not (tmp_path / "ckpt.tmp").exists() and "adapter_config.json" not in files
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    assert not any("lora" in k for k in reloaded.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(base.state_dict()[name].float(), reloaded.state_dict()[name].float())
