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

from cai_pipeline.errors import UserError
from cai_pipeline.fingerprint import run_fingerprint
from cai_pipeline.models import resolve_model
from cai_pipeline.stages.base import RunContext
from cai_pipeline.store import RunLayout, RunStore, folder_is_ours, mark_folder, replace_problem
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


# ---------------------------------------------------------------------------------------------------------
# Where training writes: never over a folder we did not make


def _within(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def _models_read(cfg) -> list[tuple[str, Path]]:
    """(config key, local folder) of every model the run reads that is a folder here (a hub id or a served
    name is not one of ours to overwrite)."""
    from cai_pipeline.models import EMBEDDED, embedded_dir

    a = cfg.audit
    named = [("model", cfg.model), ("judge.model", cfg.judge.model), ("train.model", cfg.train.model),
             ("train.reference_model", cfg.train.reference_model), ("audit.model", a.model),
             ("audit.baseline", a.baseline), ("audit.judge.model", a.judge.model)]
    folders = [(key, embedded_dir() if name == EMBEDDED else Path(name).expanduser()) for key, name in named if name]
    return [(key, folder.resolve()) for key, folder in folders if folder.is_dir()]


def _target_problem(target: Path, own: Path, cfg, owned: list[str]) -> str | None:
    """Why training may not write the folder `target` (`own`: the run's own folder for it, its default)."""
    run = Path(cfg.out_dir).resolve()
    if _within(run, target):
        return f"{target} is the run folder {run}, or holds it: writing there would replace the run"
    if _within(target, run) and target != own:
        top = target.relative_to(run).parts[0]
        if top in owned:
            return f"{target} lies in the run's {top}/, which the run itself writes"
    for other, model in _models_read(cfg):
        if not (other == "audit.model" and model == target) and _within(model, target):
            return f"{target} is {other} ({model}), a model this run reads, or holds it"
    problem = replace_problem(target)
    if problem and not (target == own and RunStore(run).is_run()):  # the run's own entry (made before markers)
        return f"{target} {problem}"
    return None


def check(assets, planned: set[str], models: bool = True, *, owned: list[str] = ()) -> None:
    """**Preflight.** The checkpoint folder (train.out_dir) is written only as a new path, an empty folder, or
    a folder holding a checkpoint we wrote (our marker) — never the run folder, a folder holding it, one of
    the run's own entries, a model the run reads or the training data; the log folder (train.log_dir) alike.
    `owned`: the run folder's entries the run writes (stages.owned_entries() with the layout's fixed ones)."""
    cfg, layout = assets.cfg, RunLayout(assets.cfg.out_dir)
    owned = [*owned, *RunLayout.FIXED]
    out = checkpoint_path(cfg, layout).expanduser().resolve()
    log = (Path(cfg.train.log_dir).expanduser() if cfg.train.log_dir else layout.train_dir).resolve()
    data = (Path(cfg.train.data).expanduser() if cfg.train.data
            else layout.dataset("sft" if cfg.train.is_sft else "preferences")).resolve()
    for key, target, own, fix in (
            ("train.out_dir", out, layout.checkpoint.resolve(), "leave it unset (the run's checkpoint/)"),
            ("train.log_dir", log, layout.train_dir.resolve(), "leave it unset (the run's train/)")):
        problem = _target_problem(target, own, cfg, owned)
        if problem:
            raise UserError(f"{key}: {problem}; {fix} or name a new or empty folder — nothing was changed")
    if _within(out, log) or _within(log, out):
        raise UserError(f"train.out_dir: {out} and train.log_dir {log} overlap, and the checkpoint replaces its "
                        "whole folder; give them separate folders — nothing was changed")
    if _within(data, out):
        raise UserError(f"train.out_dir: {out} holds the training data ({data}), which the checkpoint would "
                        "replace; name a new or empty folder — nothing was changed")


def adopt_own_checkpoint(cfg, layout: RunLayout) -> None:
    """A checkpoint in the run's own checkpoint/ written before checkpoints carried our marker is ours (the
    run's manifest vouches for the entry): mark it, so a retraining may replace it (store.atomic_folder)."""
    out = checkpoint_path(cfg, layout)
    if out == layout.checkpoint and out.is_dir() and not folder_is_ours(out) and RunStore(layout.root).is_run():
        mark_folder(out)


def identity(ctx: RunContext) -> dict:
    return inputs_identity(ctx.cfg, ctx.store.layout)


def outputs(ctx: RunContext) -> list:
    """The checkpoint's config and weights: their sizes and hashes are recorded, so a damaged one is retrained."""
    folder = checkpoint_path(ctx.cfg, ctx.store.layout)
    return [folder / "config.json", *sorted(folder.glob("*.safetensors"))]


def run(ctx: RunContext) -> dict:
    from cai_pipeline.train import train

    adopt_own_checkpoint(ctx.cfg, ctx.store.layout)
    return train(job_for(ctx.cfg, ctx.store.layout, fingerprint=ctx.fingerprint, restart=ctx.redo))


def summary_line(summary: dict) -> tuple[str, str]:
    """(out, details) of the stage's summary for the run's summary table."""
    loss = summary.get("final_loss")
    return "", f"{summary.get('steps', 0)} steps, final loss {loss:.4f}" if loss is not None else ""
