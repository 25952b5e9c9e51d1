"""Each loss against numbers worked out by hand (the arithmetic is in each docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from cai_pipeline.train import losses
from cai_pipeline.train.losses import dpo_loss, ipo_loss, orpo_loss, sequence_logps, simpo_loss


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_sequence_logps_by_hand():
    """Every position has logits [0, 0, ln 2]: logsumexp = ln(1 + 1 + 2) = ln 4.
    Labels [2, 0, 1], mask [1, 1, 0]: log p = (ln 2 − ln 4) + (0 − ln 4) = −ln 2 − 2 ln 2 = −3 ln 2 = −2.0794;
    the third position is masked out. Average: −3 ln 2 / 2 = −1.0397."""
    logits = torch.tensor([[[0.0, 0.0, math.log(2)]] * 3])
    labels = torch.tensor([[2, 0, 1]])
    mask = torch.tensor([[1, 1, 0]])
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(-3 * math.log(2), abs=1e-6)
    assert sequence_logps(logits, labels, mask, average=True).item() == pytest.approx(-1.5 * math.log(2), abs=1e-6)


def test_sequence_logps_ignores_masked_label_values():
    """-100 (or any id) where the mask is 0 must neither crash the gather nor count."""
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[1, 2, -100, -100], [3, -100, -100, -100]])
    mask = labels != -100
    want = torch.log_softmax(logits, -1)
    expected = torch.stack([want[0, 0, 1] + want[0, 1, 2], want[1, 0, 3]])
    assert torch.allclose(sequence_logps(logits, labels, mask), expected, atol=1e-6)


def test_sequence_logps_chunked_equals_full_log_softmax(monkeypatch):
    """One row per chunk (the smallest chunk) gives the same values and gradients as a full log_softmax."""
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 1)
    torch.manual_seed(0)
    logits = torch.randn(5, 6, 11, requires_grad=True)
    labels = torch.randint(0, 11, (5, 6))
    mask = torch.rand(5, 6) > 0.3
    ours = sequence_logps(logits, labels, mask)
    ref = (torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1) * mask).sum(-1)
    assert torch.allclose(ours, ref, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_sequence_logps_bf16_logits_are_scored_in_fp32():
    logits = torch.randn(2, 3, 50).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 3))
    out = sequence_logps(logits, labels, torch.ones(2, 3))
    assert out.dtype == torch.float32
    ref = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).sum((1, 2))
    assert torch.allclose(out, ref, atol=1e-5)


def test_dpo_by_hand():
    """pc=−1, pr=−3, rc=−2, rr=−2, β=0.5: h = (−1 − −3) − (−2 − −2) = 2, β·h = 1.
    loss = −logσ(1) = log(1 + e⁻¹) = 0.313262; rewards β(pc − rc) = 0.5, β(pr − rr) = −0.5.
    With label_smoothing 0.1: 0.9·0.313262 + 0.1·(−logσ(−1)) = 0.9·0.313262 + 0.1·1.313262 = 0.413262."""
    losses_, rc_, rr_ = dpo_loss(t(-1), t(-3), t(-2), t(-2), beta=0.5)
    assert losses_.item() == pytest.approx(0.313262, abs=1e-6)
    assert (rc_.item(), rr_.item()) == pytest.approx((0.5, -0.5))
    smoothed, _, _ = dpo_loss(t(-1), t(-3), t(-2), t(-2), beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.413262, abs=1e-6)


def test_dpo_at_initialisation_is_log2():
    """Policy = reference: h = 0, loss = −logσ(0) = ln 2 whatever the log-probs."""
    losses_, _, _ = dpo_loss(t(-5, -1), t(-7, -2), t(-5, -1), t(-7, -2), beta=0.1)
    assert torch.allclose(losses_, torch.full((2,), math.log(2)))


def test_dpo_soft_target_one_is_plain_dpo_and_smoothing_is_target():
    torch.manual_seed(1)
    pc, pr, rc, rr = (torch.randn(6) * 3 for _ in range(4))
    plain, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2)
    soft_one, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2, target=torch.ones(6))
    assert torch.allclose(plain, soft_one, atol=1e-7)
    for eps in (0.05, 0.2, 0.4):
        smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=eps)
        targeted, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2, target=torch.full((6,), 1 - eps))
        assert torch.allclose(smoothed, targeted, atol=1e-7)


def test_dpo_soft_target_by_hand():
    """β·h = 1 (as above), t = 0.25: loss = 0.25·(−logσ(1)) + 0.75·(−logσ(−1))
    = 0.25·0.313262 + 0.75·1.313262 = 0.078316 + 0.984947 = 1.063262. With t = 0.5 the loss is minimised at h = 0."""
    losses_, _, _ = dpo_loss(t(-1), t(-3), t(-2), t(-2), beta=0.5, target=t(0.25))
    assert losses_.item() == pytest.approx(1.063262, abs=1e-6)
    h = torch.zeros(1, requires_grad=True)
    half, _, _ = dpo_loss(h, t(0), t(0), t(0), beta=1.0, target=t(0.5))
    (grad,) = torch.autograd.grad(half.sum(), h)
    assert grad.item() == pytest.approx(0.0, abs=1e-7)


def test_dpo_rejects_target_and_smoothing_together():
    with pytest.raises(ValueError):
        dpo_loss(t(0), t(0), t(0), t(0), beta=0.1, label_smoothing=0.1, target=t(0.9))


def test_ipo_by_hand():
    """pc=−1, pr=−2, rc=−1.5, rr=−1.5, β=0.25: h = 1 − 0 = 1; 1/(2β) = 2; loss = (1 − 2)² = 1.
    rewards 0.25·(−1 − −1.5) = 0.125 and 0.25·(−2 − −1.5) = −0.125. At h = 1/(2β) the loss is 0."""
    losses_, rc_, rr_ = ipo_loss(t(-1), t(-2), t(-1.5), t(-1.5), beta=0.25)
    assert losses_.item() == pytest.approx(1.0, abs=1e-6)
    assert (rc_.item(), rr_.item()) == pytest.approx((0.125, -0.125))
    at_target, _, _ = ipo_loss(t(0), t(-2), t(0), t(0), beta=0.25)
    assert at_target.item() == pytest.approx(0.0, abs=1e-7)


def test_simpo_by_hand():
    """pc_avg=−0.5, pr_avg=−1.0, β=2, γ=0.5: β·(−0.5 − −1.0) − γ = 1 − 0.5 = 0.5;
    loss = −logσ(0.5) = log(1 + e^−0.5) = 0.474077; rewards 2·−0.5 = −1 and 2·−1 = −2."""
    losses_, rc_, rr_ = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.5)
    assert losses_.item() == pytest.approx(0.474077, abs=1e-6)
    assert (rc_.item(), rr_.item()) == pytest.approx((-1.0, -2.0))


def test_orpo_by_hand():
    """pc_avg = ln 0.5 (p = 0.5, odds 1), pr_avg = ln 0.25 (p = 0.25, odds 1/3):
    log_odds = ln 1 − ln(1/3) = ln 3 = 1.098612. chosen_nll = −ln 0.5 = 0.693147, λ = 0.1:
    loss = 0.693147 − 0.1·logσ(ln 3) = 0.693147 + 0.1·ln(1 + 1/3) = 0.693147 + 0.1·0.287682 = 0.721916."""
    pc, pr = t(math.log(0.5)), t(math.log(0.25))
    losses_, log_odds = orpo_loss(pc, pr, -pc, lam=0.1)
    assert log_odds.item() == pytest.approx(math.log(3), abs=1e-6)
    assert losses_.item() == pytest.approx(0.721916, abs=1e-6)


def test_orpo_is_finite_near_probability_one():
    """avg log-prob −1e−8 (p ≈ 1): log(1 − p) = log(1e−8) = −18.42, computed with expm1, not log1p(−exp)."""
    pc = torch.tensor([-1e-8], dtype=torch.float64, requires_grad=True)
    losses_, log_odds = orpo_loss(pc, torch.tensor([-3.0], dtype=torch.float64), -pc, lam=0.1)
    expected = (-1e-8 + 3.0) - (math.log(1e-8) - math.log(1 - math.exp(-3.0)))
    assert log_odds.item() == pytest.approx(expected, rel=1e-6)
    losses_.sum().backward()
    assert torch.isfinite(pc.grad).all()
