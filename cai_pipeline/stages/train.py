"""Train: the preference (or SFT) trainer on the run's datasets, as one run-scope stage.

Skipped when a checkpoint exists for the same data, model and settings; refused when the settings changed
and a checkpoint from other settings is in the way (`cai train --restart` retrains; see pipeline.py).
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


def identity(ctx: RunContext) -> dict:
    """The data trained on (its bytes) and the starting model (its weight files), so a finished training is
    recognised without loading anything, and a changed dataset or model is not mistaken for it."""
    from cai_pipeline.models import resolve_model
    from cai_pipeline.train.data import find_splits
    from cai_pipeline.train.loop import resolve_paths
    from cai_pipeline.train.reference import model_identity

    data = resolve_paths(ctx.cfg, ctx.store.layout)["data"]
    digest = _files_digest(f for split in find_splits(data).values() for f in split)  # a bad path fails here
    return {"data": str(data), "data_sha256": digest,
            "model": model_identity(resolve_model(ctx.cfg.train.model or ctx.cfg.model))}


def outputs(ctx: RunContext) -> list:
    from cai_pipeline.train.loop import resolve_paths

    return [resolve_paths(ctx.cfg, ctx.store.layout)["out"] / "config.json"]


def run(ctx: RunContext) -> dict:
    from cai_pipeline.train.loop import train

    return train(ctx.cfg, ctx.store.layout)
