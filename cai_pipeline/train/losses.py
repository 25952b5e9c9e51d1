"""Training losses: pure functions over per-sequence log-probabilities (the preference losses and SFT's NLL).

Notation (every tensor below has shape `(B,)`, one entry per preference pair):
  pc, pr   policy log-probs of the chosen / rejected completion, log π_θ(y_w|x), log π_θ(y_l|x)
  rc, rr   the same under the frozen reference model π_ref
  *_avg    length-normalised log-probs: the sum above divided by the completion's token count

Each function returns per-example losses; the trainer takes their mean. Rewards are detached: they are what
the metrics report, never part of the gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Elements of logits upcast to fp32 at once inside sequence_logps (≈128 MiB): bounds the temporary copy.
_CHUNK_ELEMENTS = 1 << 25


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *, average: bool = False
) -> torch.Tensor:
    """Sum (or mean) over the masked positions of each row's label log-probabilities.

    logits: (B, T, V) — logits[b, t] is the distribution that scores labels[b, t] (the caller has shifted)
    labels: (B, T) int — token ids; any value where mask is 0 (e.g. -100) is ignored
    mask:   (B, T) bool/int/float — 1 where the token belongs to the completion
    returns (B,) float32:  Σ_t mask·log p(labels[t])   or that sum / Σ_t mask  when average=True

    log p(y) = logit_y − logsumexp(logits): we gather one logit per position and subtract the logsumexp, a few
    rows at a time, so no full-vocabulary log-softmax copy of the whole batch ever exists.
    """
    mask = mask.to(torch.float32)
    safe_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels)).unsqueeze(-1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    per_token = []
    for start in range(0, logits.shape[0], rows):
        chunk = logits[start : start + rows].float()
        picked = chunk.gather(-1, safe_labels[start : start + rows]).squeeze(-1)
        per_token.append(picked - chunk.logsumexp(-1))
    logps = (torch.cat(per_token) * mask).sum(-1)
    return logps / mask.sum(-1).clamp(min=1) if average else logps


def dpo_loss(
    pc: torch.Tensor,
    pr: torch.Tensor,
    rc: torch.Tensor,
    rr: torch.Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    target: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7) with a target probability t that the chosen completion is better.

        h    = (pc − pr) − (rc − rr)
        loss = −t·logσ(β·h) − (1 − t)·logσ(−β·h)

    t = 1 is plain DPO; t = 1 − label_smoothing is robust/conservative DPO (cDPO, Mitchell 2023); a per-example
    `target` (B,), e.g. the AI judge's p_chosen, gives soft-label DPO. All inputs (B,); returns
    (losses, chosen_rewards, rejected_rewards), each (B,), with rewards β·(pc − rc) and β·(pr − rr).
    """
    if target is not None and label_smoothing:
        raise ValueError("give either target or label_smoothing, not both: each sets t")
    t = target.to(pc.dtype) if target is not None else 1.0 - label_smoothing
    logits = beta * ((pc - pr) - (rc - rr))
    losses = -t * F.logsigmoid(logits) - (1 - t) * F.logsigmoid(-logits)
    return losses, (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def ipo_loss(
    pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, *, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023, eq. 17; β is the paper's τ): a squared loss that regresses h onto 1/(2β).

        h    = (pc − pr) − (rc − rr)
        loss = (h − 1/(2β))²

    The trainer passes length-averaged log-probs here, as the IPO authors' implementation does. All inputs (B,);
    returns (losses, chosen_rewards, rejected_rewards), rewards β·(pc − rc) and β·(pr − rr).
    """
    h = (pc - pr) - (rc - rr)
    losses = (h - 1 / (2 * beta)) ** 2
    return losses, (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def simpo_loss(
    pc_avg: torch.Tensor, pr_avg: torch.Tensor, *, beta: float, gamma: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024, eq. 6): length-normalised reward, a target margin γ, no reference model.

        loss = −logσ(β·(pc_avg − pr_avg) − γ)

    Inputs (B,) average per-token log-probs; returns (losses, chosen_rewards, rejected_rewards), rewards
    β·pc_avg and β·pr_avg.
    """
    losses = -F.logsigmoid(beta * (pc_avg - pr_avg) - gamma)
    return losses, (beta * pc_avg).detach(), (beta * pr_avg).detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − eˣ) for x < 0, accurate at both ends (Mächler 2012): expm1 near 0, log1p far from it."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(
    pc_avg: torch.Tensor, pr_avg: torch.Tensor, chosen_nll: torch.Tensor, *, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al. 2024, eqs. 6–7): SFT on the chosen completion plus an odds-ratio term, no reference.

        odds(p)  = p / (1 − p),  p = exp(avg log-prob)
        log_odds = log odds(p_c) − log odds(p_r) = (pc_avg − pr_avg) − (log(1 − e^pc_avg) − log(1 − e^pr_avg))
        loss     = chosen_nll − λ·logσ(log_odds)

    Inputs (B,): average log-probs and the chosen completion's average negative log-likelihood (the trainer
    passes −pc_avg). Returns (losses, log_odds), each (B,).
    """
    log_odds = (pc_avg - pr_avg) - (_log1mexp(pc_avg) - _log1mexp(pr_avg))
    losses = chosen_nll - lam * F.logsigmoid(log_odds)
    return losses, log_odds


def sft_loss(logps: torch.Tensor, n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervised fine-tuning (SL-CAI: Bai et al. 2022 fine-tune on the final revisions): the negative
    log-likelihood of the trained (assistant) tokens, averaged over tokens.

        loss = −Σ_b logps_b / Σ_b n_b

    logps: (B,) per-conversation sums of the trained tokens' log-probs (sequence_logps); n_tokens: (B,) how many
    tokens each sum has. Returns (nll (B,), tokens (B,)) rather than the quotient, because the mean is over every
    token of an optimizer step — all its micro-batches, on all processes — which no one batch knows: the trainer
    divides the step's Σ nll by its Σ tokens (as transformers' Trainer does with `num_items_in_batch`), so the
    step's gradient does not depend on how the step is split into micro-batches or processes.
    """
    return -logps, n_tokens.to(logps.dtype)
