"""The sort-free nucleus (top-p) mask we give vLLM on CPU keeps exactly the tokens vLLM's own top-p keeps."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import missing

if importlib.util.find_spec("vllm") is None:
    missing("vLLM is not installed: the nucleus processor is a vLLM logits processor")

import torch  # noqa: E402
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch  # noqa: E402

from cai_pipeline.engines import vllm as vllm_engine_module  # noqa: E402
from cai_pipeline.engines.nucleus import KEY, mask_outside_nucleus_, nucleus_floor  # noqa: E402


@pytest.mark.parametrize("scale", [3.0, 1.0, 0.3])  # peaked rows (the usual case) to flat ones (full-sort fallback)
def test_the_mask_equals_vllms_own_top_p(scale):
    torch.manual_seed(0)
    logits = torch.randn(16, 49152) * scale
    top_p = torch.linspace(0.05, 0.99, 16)
    theirs = apply_top_k_top_p_pytorch(logits.clone(), None, top_p)
    ours = mask_outside_nucleus_(logits.clone(), top_p)
    # vLLM sums the mass from the unlikely end, we from the likely one: the float rounding of a 10k-token sum
    # may move the boundary of a wide nucleus by one token, never more.
    differ = ours.isinf() != theirs.isinf()
    assert differ.sum(dim=-1).max() <= 1 and differ.sum() <= 2
    kept = ~ours.isinf()
    assert torch.equal(ours[kept], logits[kept])  # the kept logits are untouched


def test_a_row_past_the_top_k_falls_back_to_the_whole_row():
    probs = torch.full((1, 100), 0.01)  # flat: the nucleus of 0.9 needs 90 tokens, more than k=8
    assert nucleus_floor(probs, torch.tensor([0.9]), k=8).item() == pytest.approx(0.01)
    peaked = torch.tensor([[0.6, 0.3, 0.05, 0.05]])
    # 0.6 alone is < 0.7, so the second token is kept too; above it lies 0.9 >= 0.7, so the third is not.
    assert nucleus_floor(peaked, torch.tensor([0.7]), k=2).item() == pytest.approx(0.3)


def test_the_engine_names_the_same_key():
    assert vllm_engine_module.NUCLEUS_KEY == KEY
    assert vllm_engine_module.NUCLEUS == "cai_pipeline.engines.nucleus:Nucleus"


def test_the_processor_masks_only_the_rows_that_asked_for_top_p():
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    from cai_pipeline.engines.nucleus import Nucleus

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
