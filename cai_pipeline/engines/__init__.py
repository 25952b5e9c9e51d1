"""Engines behind one protocol (see base.py). `make_engine` builds one from a config or from keywords."""

from __future__ import annotations

import importlib.util
from typing import Any

from cai_pipeline.engines.base import Completion, Engine, EngineStats, GenParams, Message
from cai_pipeline.errors import UserError
from cai_pipeline.store import RunLayout

__all__ = ["Completion", "Engine", "EngineStats", "GenParams", "Message", "make_engine", "resolve_kind"]


def resolve_kind(kind: str) -> str:
    """`auto` → vllm where it is importable, else hf."""
    if kind != "auto":
        return kind
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def make_engine(cfg: Any = None, *, kind: str | None = None, model: str | None = None, seed: int = 0,
                batch_dir: str | None = None, **options: Any) -> Engine:
    """`make_engine(run_cfg)` (a RunConfig: uses .engine, .model, .seed) or `make_engine(kind="hf",
    model="embedded", batch_size=8)` with EngineConfig fields as keywords. batch_dir: where engine.batch keeps
    its batches' states (default: the run folder's batches/)."""
    from cai_pipeline.config import EngineConfig
    from cai_pipeline.models import check_model

    if cfg is not None:
        engine_cfg, model, seed = cfg.engine, model or cfg.model, cfg.seed
        batch_dir = batch_dir or str(RunLayout(cfg.out_dir).batches)
        if kind is not None:
            engine_cfg = engine_cfg.model_copy(update={"kind": kind})
    else:
        engine_cfg = EngineConfig(kind=kind or "auto", **options)
    model = model or "embedded"
    chosen = resolve_kind(engine_cfg.kind)
    if chosen == "openai":
        from cai_pipeline.engines.openai import OpenAIEngine

        engine = OpenAIEngine.from_config(engine_cfg, model)
        if not engine_cfg.batch:
            return engine
        if batch_dir is None:
            raise UserError("engine.batch: a batch's state lives in a run folder; give one (out_dir)")
        from cai_pipeline.engines.openai_batch import BatchEngine

        return BatchEngine(engine, batch_dir, poll_s=engine_cfg.batch_poll_s, window=engine_cfg.batch_window)
    path = check_model(model, "model")
    if engine_cfg.trust_remote_code:
        import warnings

        warnings.warn(f"trust_remote_code is on: code shipped with {model} will run on this machine", stacklevel=2)
    if chosen == "vllm":
        from cai_pipeline.engines.vllm import VLLMEngine

        return VLLMEngine(path, dtype=engine_cfg.dtype, seed=seed, max_model_len=engine_cfg.max_model_len,
                          gpu_memory_utilization=engine_cfg.gpu_memory_utilization,
                          tensor_parallel_size=engine_cfg.tensor_parallel_size,
                          kv_cache_gb=engine_cfg.kv_cache_gb, trust_remote_code=engine_cfg.trust_remote_code,
                          fp32_head=engine_cfg.fp32_head, block_size=engine_cfg.block_size,
                          row_seeds=engine_cfg.row_seeds)
    from cai_pipeline.engines.hf import HFEngine

    return HFEngine(path, dtype=engine_cfg.dtype, batch_size=engine_cfg.batch_size,
                    max_model_len=engine_cfg.max_model_len, trust_remote_code=engine_cfg.trust_remote_code,
                    fp32_head=engine_cfg.fp32_head, row_seeds=engine_cfg.row_seeds)
