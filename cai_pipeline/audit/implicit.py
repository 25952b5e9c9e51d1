"""The audit's "agreement with the learned preferences": for a DPO/IPO checkpoint of this run, its
implicit-reward accuracy on the run's held-out preference pairs (the test split of the data it trained on),
next to the base model's reference-free accuracy on the same pairs (train/implicit_reward.py has the
definitions), each with a cluster bootstrap interval over prompts (stats.rate_interval).

Only the run's own checkpoint is measured (audit.model unset, the audited side not a log): its reference
model and β are known from train:, and its held-out pairs are known to be held out.
"""

from __future__ import annotations

from pathlib import Path

from cai_pipeline.rng import derive_seed


def held_out_pairs(cfg, layout) -> list[dict]:
    """The test split of the preference data the checkpoint trained on (train.data, else the run's export)."""
    from cai_pipeline.errors import UserError
    from cai_pipeline.train.data import find_splits
    from cai_pipeline.train.formats import read_split

    data = Path(cfg.train.data) if cfg.train.data else layout.dataset("preferences")
    try:
        files = find_splits(data)["test"]
    except UserError:
        return []
    split = read_split(files, "preference") if files else None
    return split.rows if split else []


def applies(cfg, found) -> bool:
    a, t = cfg.audit, cfg.train
    return a.implicit_reward and t.loss in ("dpo", "ipo") and found["model"].default and not a.responses


def implicit_reward(cfg, layout, found) -> dict | None:
    """{loss, beta, n, reference, checkpoint: {accuracy, ci_low, ci_high}, base: {...}} or None when it does not
    apply (not a DPO/IPO checkpoint of this run, or no held-out pairs)."""
    from cai_pipeline.audit.stats import rate_interval
    from cai_pipeline.models import resolve_model
    from cai_pipeline.train.implicit_reward import (
        agreement,
        completion_logps,
        implicit_margins,
        reference_free_margins,
    )

    if not applies(cfg, found):
        return None
    rows = held_out_pairs(cfg, layout)
    if not rows:
        return None
    t, a = cfg.train, cfg.audit
    checkpoint = found["model"].name
    reference = resolve_model(t.reference_model or t.model or cfg.model)
    kw = {"max_length": t.max_length, "max_prompt_length": t.max_prompt_length}
    policy, counts = completion_logps(checkpoint, rows, key="audit.model", **kw)
    ref, _ = completion_logps(reference, rows, key="train.reference_model", tokenizer_path=checkpoint, **kw)
    beta = t.resolved_beta()
    units = [str(r["prompt"]) for r in rows]  # pairs of one prompt move together: resample prompts

    def interval(margins, name: str) -> dict:
        got = rate_interval(agreement(margins), units, n_boot=a.bootstrap, confidence=a.confidence,
                            seed=derive_seed(cfg.seed, "audit", "implicit", name))
        return {"accuracy": got["violation_rate"], "ci_low": got["ci_low"], "ci_high": got["ci_high"]}

    return {"loss": t.loss, "beta": beta, "n": len(rows), "reference": reference,
            "checkpoint": interval(implicit_margins(policy, ref, counts, beta=beta, loss=t.loss), "checkpoint"),
            "base": interval(reference_free_margins(ref, counts, loss=t.loss), "base")}
