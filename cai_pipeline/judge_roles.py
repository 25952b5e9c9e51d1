"""Who judges whom: the warning for a judge that grades its own model.

A judge that is the policy, or the model the policy started from, favours that model's outputs: LLM evaluators
recognise and prefer their own generations (Panickssery et al. 2024, arXiv 2404.13076), and a judge related to
the model that made the data leaks its preferences into the labels (preference leakage, Li et al. 2025, arXiv
2502.01534). The project's default — one model for everything — is exactly that case, so every command that
judges (`cai run` with the judge or audit stage, `cai audit`, `cai iterate`) says so in one line, records it in
the manifest, and the dataset card repeats it.
"""

from __future__ import annotations

from pathlib import Path

from cai_pipeline.models import EMBEDDED, embedded_dir


def same_model(a: str | None, b: str | None) -> bool:
    """The same model by name, or the same folder on disk (`embedded` is its converted folder)."""
    if not a or not b:
        return False
    if a == b:
        return True

    def where(name: str) -> Path | None:
        path = embedded_dir() if name == EMBEDDED else Path(name).expanduser()
        return path.resolve() if path.is_dir() else None

    pa, pb = where(a), where(b)
    return pa is not None and pa == pb


def self_judge_warning(judge: str, policy: str | None, started_from: str | None = None,
                       key: str = "judge.model") -> str | None:
    """One line naming the risk and the fix when `judge` is the `policy` or the model it `started_from`; else None."""
    if same_model(judge, policy):
        role = "the policy"
    elif same_model(judge, started_from):
        role = "the model the policy started from"
    else:
        return None
    return (f"the judge ({judge}) is {role}: a model grading its own outputs favours them (self-preference, "
            f"arXiv 2404.13076; preference leakage, arXiv 2502.01534); set {key} to a different, stronger model")


def run_warnings(cfg, stage_names) -> dict[str, str | None]:
    """Per stage of `stage_names` that judges, its self-judging warning or None: the judge stage grades the
    policy's samples (`model`); the audit's judge grades the audited model (audit.model, by default the run's
    checkpoint, which started from train.model, else `model`)."""
    found: dict[str, str | None] = {}
    if "judge" in stage_names:
        found["judge"] = self_judge_warning(cfg.judge.model or cfg.model, cfg.model)
    if "audit" in stage_names:
        a = cfg.audit
        judge = a.judge.model or cfg.judge.model or cfg.model
        key = "audit.judge.model" if a.judge.model else "judge.model (or audit.judge.model)"
        # a log's model is not known by name (audit.responses): nothing to compare the judge with
        found["audit"] = None if a.responses else self_judge_warning(judge, a.model, cfg.train.model or cfg.model, key)
    return found
