"""Reference log-probs for DPO/IPO: computed once, before training, and cached on disk.

The reference model is the policy before its first update (or `train.reference_model`), so we score every
pair with it up front and keep two numbers per pair. No second model is resident during training, and a later
run over the same model, data and tokenisation reads them from `$CAI_HOME/refcache/<key>.pt` instead of
running the model again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from cai_pipeline.models import cai_home
from cai_pipeline.train.modeling import MODEL_INPUTS, PairScorer

# Bump when the way log-probs are computed changes, so old cache entries are never read as current.
CACHE_VERSION = 2  # 2: the LM head in fp32 under autocast (modeling._head_logps)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def model_identity(path: str) -> dict:
    """What pins a model's weights without reading them: each weights file's name, size and mtime (hashing
    gigabytes on every run would cost more than the reference pass it saves). A hub id is just its name."""
    folder = Path(path)
    files = sorted(f for f in folder.glob("*") if f.suffix in _WEIGHT_SUFFIXES) if folder.is_dir() else []
    return {"model": str(folder.resolve()) if folder.is_dir() else path,
            "weights": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def cache_key(model_path: str, pairs, *, precision: str, settings: dict) -> str:
    """sha256 over the model identity, the token ids of every pair (so the dataset content, tokenizer, chat
    template and truncation all count), the precision and the length and batching settings."""
    blob = json.dumps({"version": CACHE_VERSION, "identity": model_identity(model_path), "precision": precision,
                       "settings": settings, "data": pairs.fingerprint()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_path(key: str) -> Path:
    return cai_home() / "refcache" / f"{key}.pt"


@torch.no_grad()
def compute_reference(accelerator, lm, batches: Iterable[dict], n: int) -> torch.Tensor:
    """(n, 2) log-prob sums [chosen, rejected] of every pair under `lm` as it is now (before any update).

    Each process scores its own `batches` — the very micro-batches it trains on in the first epoch (batches.StepPlan),
    under the same autocast, so at step 0 the policy and its reference compute on identical tensors and agree
    bit for bit, also in bf16, where a different batch shape alone moves a completion's log-prob by tenths of a
    nat — and the processes' scores are gathered into one table that every process holds. The bare model does
    the scoring (not its DDP wrapper), so processes with unequal shares need not run in step."""
    scorer = PairScorer(lm).to(accelerator.device).eval()
    local: dict[int, list[float]] = {}
    for batch in batches:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            logps, _ = scorer(**{k: batch[k] for k in MODEL_INPUTS})
        for i, pair in zip(batch["idx"].tolist(), logps.float().view(2, -1).T.tolist()):
            local[i] = pair
    scorer.train()
    table = torch.full((n, 2), float("nan"))
    for part in gather_object([local]):
        for i, pair in part.items():
            table[i] = torch.tensor(pair)
    if torch.isnan(table).any():
        raise RuntimeError("the reference pass left pairs unscored; the batch plan does not cover the split")
    return table


def reference_logps(accelerator, lm, batches: Iterable[dict], n: int, *, key: str | None):
    """(logps (n, 2), "cached" | "computed"). key None: do not cache. Only the main process writes the cache."""
    path = cache_path(key) if key else None
    # Every process must take the same branch (the computation gathers), so the main process decides.
    use_cache = broadcast_object_list([path is not None and path.exists() and
                                       torch.load(path, weights_only=True).shape == (n, 2)])[0]
    if use_cache:
        return torch.load(path, weights_only=True), "cached"
    logps = compute_reference(accelerator, lm, batches, n)
    if path is not None and accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(logps, tmp)
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the new one, never half
    return logps, "computed"
