"""Train: the preference (or SFT) trainer on the run's datasets, as one run-scope stage.

The trainer (cai_pipeline/train/) knows models, data and paths only; this module adapts a run to it: the
`train:` paths with their fallbacks into the run folder, the stage's fingerprint, and the TrainJob.

Skipped when a checkpoint exists for the same data, models and settings; refused when the settings changed
and a checkpoint from other settings is in the way (`cai train --restart` retrains; see pipeline.py). A
training cut short resumes from its newest state in train/state/, which records this stage's fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cai_pipeline.fingerprint import run_fingerprint
from cai_pipeline.models import resolve_model
from cai_pipeline.stages.base import RunContext
from cai_pipeline.store import RunLayout
from cai_pipeline.train.job import TrainJob

SETTINGS = ("train",)


def resolve_paths(run_cfg, layout: RunLayout) -> dict:
    """The `train:` paths with their fallbacks into the run folder (the SFT dataset for loss sft)."""
    cfg = run_cfg.train
    return {"data": Path(cfg.data) if cfg.data else layout.dataset("sft" if cfg.is_sft else "preferences"),
            "model": resolve_model(cfg.model or run_cfg.model),
            "reference": resolve_model(cfg.reference_model) if cfg.reference_model and cfg.needs_reference else None,
            "out": Path(cfg.out_dir) if cfg.out_dir else layout.checkpoint,
            "log": Path(cfg.log_dir) if cfg.log_dir else layout.train_dir}


def checkpoint_path(run_cfg, layout: RunLayout) -> Path:
    """Where the run's trained model is (or will be): train.out_dir, else <out_dir>/checkpoint."""
    return Path(run_cfg.train.out_dir) if run_cfg.train.out_dir else layout.checkpoint


def _files_digest(files) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def inputs_identity(cfg, layout: RunLayout) -> dict:
    """The data trained on (its bytes), the starting model and the reference model (their weight files), so a
    finished training is recognised without loading anything, and a changed input is not mistaken for it.
    (The processes it runs on are a setting: train.nproc.)"""
    from cai_pipeline.train.data import find_splits
    from cai_pipeline.train.reference import model_identity

    paths = resolve_paths(cfg, layout)
    digest = _files_digest(f for split in find_splits(paths["data"]).values() for f in split)  # a bad path fails here
    identity = {"data": str(paths["data"]), "data_sha256": digest, "model": model_identity(paths["model"])}
    if paths["reference"] is not None:
        identity["reference_model"] = model_identity(paths["reference"])
    return identity


def stage_fingerprint(cfg, layout: RunLayout) -> dict:
    """The stage's fingerprint, as pipeline.run_whole records it (for a training started outside a run)."""
    return run_fingerprint(cfg, SETTINGS, inputs_identity(cfg, layout))


def job_for(run_cfg, layout: RunLayout | None = None, *, fingerprint: dict | None = None,
            restart: bool = False) -> TrainJob:
    """The TrainJob of a run: its `train:` settings, paths and seed, and the stage's fingerprint."""
    layout = layout or RunLayout(run_cfg.out_dir)
    paths = resolve_paths(run_cfg, layout)
    cfg = run_cfg.train
    return TrainJob(cfg=cfg, data=paths["data"], model=paths["model"], checkpoint=paths["out"], log_dir=paths["log"],
                    rejects=layout.rejects("train", 0), seed=cfg.seed if cfg.seed is not None else run_cfg.seed,
                    reference=paths["reference"],
                    fingerprint=fingerprint if fingerprint is not None else stage_fingerprint(run_cfg, layout),
                    restart=restart)


def train_run(run_cfg, *, restart: bool = False) -> dict:
    """Train a run config's `train:` section outside the pipeline (tests, benchmarks); returns the summary."""
    from cai_pipeline.train import train

    return train(job_for(run_cfg, restart=restart))


def identity(ctx: RunContext) -> dict:
    return inputs_identity(ctx.cfg, ctx.store.layout)


def outputs(ctx: RunContext) -> list:
    return [checkpoint_path(ctx.cfg, ctx.store.layout) / "config.json"]


def run(ctx: RunContext) -> dict:
    from cai_pipeline.train import train

    return train(job_for(ctx.cfg, ctx.store.layout, fingerprint=ctx.fingerprint, restart=ctx.redo))


def summary_line(summary: dict) -> tuple[str, str]:
    """(out, details) of the stage's summary for the run's summary table."""
    loss = summary.get("final_loss")
    return "", f"{summary.get('steps', 0)} steps, final loss {loss:.4f}" if loss is not None else ""
