"""Train: the preference (or SFT) trainer on the run's datasets, as one run-scope stage.

Skipped when a checkpoint exists for the same data, models and settings; refused when the settings changed
and a checkpoint from other settings is in the way (`cai train --restart` retrains; see pipeline.py). A
training cut short resumes from its newest state in train/state/, which records this stage's fingerprint.
"""

from __future__ import annotations

import hashlib

from cai_pipeline.stages.base import RunContext


def _files_digest(files) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def inputs_identity(cfg, layout) -> dict:
    """The data trained on (its bytes), the starting model and the reference model (their weight files), so a
    finished training is recognised without loading anything, and a changed input is not mistaken for it.
    (The processes it runs on are a setting: train.nproc.)"""
    from cai_pipeline.train.data import find_splits
    from cai_pipeline.train.loop import resolve_paths
    from cai_pipeline.train.reference import model_identity

    paths = resolve_paths(cfg, layout)
    digest = _files_digest(f for split in find_splits(paths["data"]).values() for f in split)  # a bad path fails here
    identity = {"data": str(paths["data"]), "data_sha256": digest, "model": model_identity(paths["model"])}
    if paths["reference"] is not None:
        identity["reference_model"] = model_identity(paths["reference"])
    return identity


def identity(ctx: RunContext) -> dict:
    return inputs_identity(ctx.cfg, ctx.store.layout)


def outputs(ctx: RunContext) -> list:
    from cai_pipeline.train.loop import resolve_paths

    return [resolve_paths(ctx.cfg, ctx.store.layout)["out"] / "config.json"]


def run(ctx: RunContext) -> dict:
    from cai_pipeline.train.loop import train

    return train(ctx.cfg, ctx.store.layout, fingerprint=ctx.fingerprint, restart=ctx.redo)
