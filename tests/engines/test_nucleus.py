"""The sort-free nucleus (top-p) mask keeps exactly the tokens vLLM's and transformers' own top-p keep."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from cai_pipeline.engines.hf import TemperatureNucleus
from cai_pipeline.engines.nucleus import KEY, mask_outside_nucleus_, nucleus_floor
from tests.conftest import missing

SCALES = [3.0, 1.0, 0.3]  # peaked rows (the usual case) to flat ones (the full-sort fallback)


@pytest.fixture
def vllm_sampler():
    if importlib.util.find_spec("vllm") is None:
        missing("vLLM is not installed: nothing to compare the vLLM processor with")
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch

    return apply_top_k_top_p_pytorch


def logits_and_ps(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(16, 49152) * scale, torch.linspace(0.05, 0.99, 16)


def assert_same_nucleus(ours: torch.Tensor, theirs: torch.Tensor, logits: torch.Tensor) -> None:
    # They sum the mass from the unlikely end, we from the likely one: the float rounding of a 10k-token sum
    # may move the boundary of a wide nucleus by one token, never more.
    differ = ours.isinf() != theirs.isinf()
    assert differ.sum(dim=-1).max() <= 1 and differ.sum() <= 2
    kept = ~ours.isinf()
    assert torch.equal(ours[kept], logits[kept])  # the kept logits are untouched


@pytest.mark.parametrize("scale", SCALES)
def test_the_mask_equals_vllms_own_top_p(scale, vllm_sampler):
    logits, top_p = logits_and_ps(scale)
    theirs = vllm_sampler(logits.clone(), None, top_p)
    assert_same_nucleus(mask_outside_nucleus_(logits.clone(), top_p), theirs, logits)


@pytest.mark.parametrize("scale", SCALES)
def test_temperature_and_mask_equal_transformers_own_warpers(scale):
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    logits, _ = logits_and_ps(scale)
    for p in (0.3, 0.95):
        theirs = TopPLogitsWarper(p)(None, TemperatureLogitsWarper(0.7)(None, logits.clone()))
        ours = TemperatureNucleus(0.7, p)(None, logits.clone())
        assert_same_nucleus(ours, theirs, logits / 0.7)


def test_a_row_past_the_top_k_falls_back_to_the_whole_row():
    probs = torch.full((1, 100), 0.01)  # flat: the nucleus of 0.9 needs 90 tokens, more than k=8
    assert nucleus_floor(probs, torch.tensor([0.9]), k=8).item() == pytest.approx(0.01)
    peaked = torch.tensor([[0.6, 0.3, 0.05, 0.05]])
    # 0.6 alone is < 0.7, so the second token is kept too; above it lies 0.9 >= 0.7, so the third is not.
    assert nucleus_floor(peaked, torch.tensor([0.7]), k=2).item() == pytest.approx(0.3)


def test_the_vllm_processor_masks_only_the_rows_that_asked_for_top_p(vllm_sampler):
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from cai_pipeline.engines import vllm as vllm_engine_module
    from cai_pipeline.engines.vllm_nucleus import Nucleus

    assert vllm_engine_module.NUCLEUS == f"{Nucleus.__module__}:{Nucleus.__name__}"  # what the engine loads
    proc = Nucleus(None, torch.device("cpu"), False)
    asks = [SamplingParams(extra_args={KEY: 0.5}), SamplingParams(), SamplingParams(extra_args={KEY: 0.9})]
    proc.update_state(BatchUpdate(batch_size=3, removed=[], added=[(i, p, [], []) for i, p in enumerate(asks)],
                                  moved=[]))
    logits = torch.randn(3, 1000) * 3
    out = proc.apply(logits.clone())
    assert not out[1].isinf().any() and out[0].isinf().any() and out[2].isinf().any()
    assert out[0].isinf().sum() > out[2].isinf().sum()  # a smaller nucleus for the smaller p
    proc.update_state(BatchUpdate(batch_size=2, removed=[0, 2], added=[], moved=[]))
    assert proc.top_p == {} and torch.equal(proc.apply(logits[:2].clone()), logits[:2])


def test_tokens_tied_at_the_edge_are_all_kept():
    # A sort keeps some of a tied group by position; we keep the whole group (the same, whatever the order).
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    probs = logits.softmax(dim=-1)
    assert probs[0, 0] < 0.5 < probs[0, 0] + probs[0, 1]  # p = 0.5 ends inside the tied group
    out = mask_outside_nucleus_(logits.clone(), torch.tensor([0.5]))
    assert out.isinf().tolist() == [[False, False, False, False, True]]
