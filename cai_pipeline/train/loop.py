"""The preference trainer: a plain loop on accelerate, readable top to bottom.

    train(run_cfg) → load policy → tokenise pairs → reference log-probs (dpo/ipo; cached) → [LoRA] →
    AdamW + warmup/decay → for each batch: score packed pairs, loss, backward (accumulated), clip, step →
    metrics.jsonl each step, eval on the test split before/every N/after → checkpoint + plots + summary.

`accelerate launch -m cai_pipeline.cli train CONFIG` runs the same code on several GPUs (DDP, FSDP, DeepSpeed).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cai_pipeline.errors import UserError
from cai_pipeline.models import resolve_model
from cai_pipeline.store import RunLayout, TrainLayout, atomic_write_json
from cai_pipeline.train.config import TrainConfig
from cai_pipeline.train.data import PairSet, end_token_ids, find_splits, pair_loader, read_rows, tokenize_rows
from cai_pipeline.train.losses import dpo_loss, ipo_loss, orpo_loss, simpo_loss
from cai_pipeline.train.modeling import MODEL_INPUTS, PairScorer, add_lora, load_policy, save_checkpoint
from cai_pipeline.train.reference import cache_key, reference_logps

log = logging.getLogger(__name__)


def train(run_cfg, layout: RunLayout | None = None) -> dict:
    """Train `run_cfg.train` on the run's preference dataset; returns the summary (also in <log_dir>/summary.json)."""
    cfg: TrainConfig = run_cfg.train
    paths = resolve_paths(run_cfg, layout or RunLayout(run_cfg.out_dir))
    written = TrainLayout(paths["log"], paths["out"])
    accelerator = make_accelerator(cfg)
    from accelerate.utils import set_seed

    seed = cfg.seed if cfg.seed is not None else run_cfg.seed
    set_seed(seed)
    files = find_splits(paths["data"])  # a wrong path fails here, before minutes of model loading
    tokenizer, lm = load_policy(paths["model"])
    splits = load_splits(paths["data"], files, tokenizer, lm, cfg)
    batch_sizes = {"train": cfg.batch_size, "test": cfg.eval_batch_size or 2 * cfg.batch_size}

    def loader(name: str) -> DataLoader:  # the training batches (reshuffled each epoch) or the test split's
        return pair_loader(splits[name], batch_sizes[name], shuffle=cfg.shuffle and name == "train", seed=seed,
                           pad_id=tokenizer.pad_token_id)

    # The reference is this very model before its first update: score every pair now, then train alone.
    refs, ref_status, ref_start = {}, "none", time.perf_counter()
    if cfg.needs_reference:
        for name, pairs in splits.items():
            key = ref_key(paths["model"], pairs, cfg, accelerator, batch_sizes[name], seed) if cfg.reference_cache else None
            refs[name], ref_status = reference_logps(accelerator, lm, loader(name), key=key)
        gc.collect()
    ref_seconds = time.perf_counter() - ref_start

    if cfg.lora is not None:
        lm = add_lora(lm, cfg.lora)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    scorer = PairScorer(lm)
    optimizer = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    scorer, optimizer, train_loader = accelerator.prepare(scorer, optimizer, loader("train"))
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(len(train_loader) / cfg.grad_accum)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    eval_loader = accelerator.prepare(loader("test")) if "test" in splits else None

    metrics = MetricsLog(written.metrics, enabled=accelerator.is_main_process)
    metrics.write({"step": 0, "counts": {name: s.counts for name, s in splits.items()}, "reference": ref_status})
    result = fit(accelerator, scorer, optimizer, scheduler, train_loader, eval_loader, refs, cfg, total_steps, metrics)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(accelerator.unwrap_model(scorer).lm, tokenizer, paths["out"], cfg.save_dtype)
        if cfg.plots:
            from cai_pipeline.train.plots import plot_metrics

            plot_metrics(written.metrics, written.plots)
    summary = {"checkpoint": str(paths["out"]), "log_dir": str(paths["log"]), "loss_type": cfg.loss,
               "reference": ref_status, "reference_seconds": ref_seconds,
               "counts": {n: s.counts for n, s in splits.items()}, **result}
    if accelerator.is_main_process:
        atomic_write_json(written.summary, summary)
    return summary


def fit(accelerator, scorer, optimizer, scheduler, loader, eval_loader, refs, cfg, total_steps, metrics) -> dict:
    """The loop. One optimizer step = grad_accum micro-batches; accelerate divides each micro-batch's loss by
    grad_accum, so the step's gradient is that of the mean loss over all its pairs."""
    evals = {"before": evaluate(accelerator, scorer, eval_loader, refs.get("test"), cfg)}
    metrics.write_eval(0, evals["before"])
    step, micro, tokens, pairs, start = 0, [], 0, 0, time.perf_counter()
    step_start = start
    while step < total_steps:
        for batch in loader:
            with accelerator.accumulate(scorer):  # (prepare() wrapped scorer.forward in the autocast)
                loss, stats = batch_loss(scorer, batch, refs.get("train"), cfg)
                accelerator.backward(loss)
                micro.append(stats)
                tokens, pairs = tokens + int(batch["n_tokens"]), pairs + len(batch["idx"])
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(scorer.parameters(), cfg.max_grad_norm or math.inf)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            now = time.perf_counter()
            row = {"step": step, **mean_stats(accelerator, micro), "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "tokens/s": step_tokens(micro) / (now - step_start)}
            metrics.write(row)
            log.info("step %d/%d loss %.4f acc %.2f", step, total_steps, row["loss"], row["rewards/accuracies"])
            micro, step_start, last = [], now, row
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                metrics.write_eval(step, evaluate(accelerator, scorer, eval_loader, refs.get("test"), cfg))
            if step >= total_steps:
                break
    seconds = time.perf_counter() - start
    evals["after"] = evaluate(accelerator, scorer, eval_loader, refs.get("test"), cfg)
    metrics.write_eval(step, evals["after"])
    return {"steps": step, "final_loss": last["loss"], "reward_accuracy": last["rewards/accuracies"],
            "train_seconds": seconds, "tokens_per_s": tokens / seconds, "pairs_per_s": pairs / seconds,
            "eval_before": evals["before"], "eval_after": evals["after"]}


def batch_loss(scorer, batch, ref_table, cfg) -> tuple[torch.Tensor, dict]:
    """Mean loss over the batch's pairs (a scalar to backpropagate) and detached per-pair stats for metrics."""
    logps, counts = scorer(**{k: batch[k] for k in MODEL_INPUTS})
    ref = ref_table[batch["idx"].cpu()].to(logps.device) if ref_table is not None else None
    losses, stats = pair_losses(cfg, logps.float(), counts, ref, batch["target"])
    stats["n_tokens"] = batch["n_tokens"].float().view(1)
    return losses.mean(), stats


def pair_losses(cfg: TrainConfig, logps, counts, ref, target) -> tuple[torch.Tensor, dict]:
    """logps, counts: (2B,) completion log-prob sums and token counts, chosen rows first; ref: (B, 2) reference
    sums [chosen, rejected] or None; target: (B,) p_chosen. Returns per-pair losses (B,) and stats (B,) each."""
    pc, pr = logps.chunk(2)
    nc, nr = counts.float().clamp(min=1).chunk(2)
    beta = cfg.resolved_beta()
    if cfg.loss == "dpo":
        shown = (pc, pr)
        soft = target.to(pc.device) if cfg.use_soft_labels else None
        losses, rw_c, rw_r = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], beta=beta, label_smoothing=cfg.label_smoothing,
                                      target=soft)
    elif cfg.loss == "ipo":  # length-averaged, as the IPO authors' implementation
        shown = (pc / nc, pr / nr)
        losses, rw_c, rw_r = ipo_loss(*shown, ref[:, 0] / nc, ref[:, 1] / nr, beta=beta)
    elif cfg.loss == "simpo":
        shown = (pc / nc, pr / nr)
        losses, rw_c, rw_r = simpo_loss(*shown, beta=beta, gamma=cfg.resolved_gamma())
    else:  # orpo: the SFT term is the chosen completion's mean token NLL, per pair (so accumulation-invariant)
        shown = (pc / nc, pr / nr)
        losses, _ = orpo_loss(*shown, -shown[0], lam=cfg.lam)
        rw_c, rw_r = (cfg.lam * s.detach() for s in shown)
    stats = {"loss": losses, "rewards/chosen": rw_c, "rewards/rejected": rw_r,
             "rewards/accuracies": (rw_c > rw_r).float(), "rewards/margins": rw_c - rw_r,
             "logps/chosen": shown[0], "logps/rejected": shown[1], "length/chosen": nc, "length/rejected": nr}
    return losses, {k: v.detach().float() for k, v in stats.items()}


@torch.no_grad()
def evaluate(accelerator, scorer, loader, ref_table, cfg) -> dict | None:
    """Mean loss, reward accuracy and margins over the test split (None when there is none)."""
    if loader is None:
        return None
    scorer.eval()
    stats = []
    for batch in loader:
        with accelerator.autocast():
            _, s = batch_loss(scorer, batch, ref_table, cfg)
        stats.append(s)
    scorer.train()
    return mean_stats(accelerator, stats)


def mean_stats(accelerator, stats: list[dict]) -> dict:
    """Per-pair stats from micro-batches (and processes) → their means over pairs."""
    out = {}
    for key in stats[0]:
        if key == "n_tokens":
            continue
        values = accelerator.gather_for_metrics(torch.cat([s[key] for s in stats]))
        out[key] = values.mean().item()
    return out


def step_tokens(micro: list[dict]) -> float:
    return float(sum(s["n_tokens"].sum() for s in micro))


# ---------------------------------------------------------------------------------------------- set-up


def resolve_paths(run_cfg, layout: RunLayout) -> dict:
    """The `train:` paths with their fallbacks into the run folder."""
    cfg = run_cfg.train
    return {"data": Path(cfg.data) if cfg.data else layout.dataset("preferences"),
            "model": resolve_model(cfg.model or run_cfg.model),
            "out": Path(cfg.out_dir) if cfg.out_dir else layout.checkpoint,
            "log": Path(cfg.log_dir) if cfg.log_dir else layout.train_dir}


def resolve_precision(precision: str) -> str:
    """auto → bf16 autocast where the hardware has bf16 arithmetic (CUDA ≥ Ampere, CPUs with AVX512-BF16/AMX;
    elsewhere CPU autocast emulates it and is slower than fp32), else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bf16" if native or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else "fp32"


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps its precision in process-global state and refuses a change; one process may train more
    # than once (the pipeline, tests), so start that state afresh. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    mixed = {"bf16": "bf16", "fp32": "no"}[resolve_precision(cfg.precision)]
    return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=cfg.grad_accum)


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def load_splits(path: Path, files: dict[str, list[Path]], tokenizer, lm, cfg: TrainConfig) -> dict[str, PairSet]:
    end_ids = end_token_ids(tokenizer, getattr(lm, "generation_config", None))
    splits = {}
    for name, split_files in files.items():
        rows = read_rows(split_files)
        if rows:
            splits[name] = tokenize_rows(rows, tokenizer, max_length=cfg.max_length,
                                         max_prompt_length=cfg.max_prompt_length, end_ids=end_ids)
    if "train" not in splits:
        raise UserError(f"train.data: {path} has no training rows; export a preference dataset first")
    if cfg.use_soft_labels and any(math.isnan(t) for s in splits.values() for t in s.target):
        raise UserError(f"train.use_soft_labels: {path} has rows without p_chosen (no judge ran); "
                        "set train.use_soft_labels=false or use train.label_smoothing")
    return splits


def ref_key(model_path: str, pairs: PairSet, cfg: TrainConfig, accelerator, batch_size: int, seed: int) -> str:
    # Batching is part of the key: in bf16 the log-probs depend (slightly) on the batch a pair was scored in.
    settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length, "batch_size": batch_size,
                "shuffle": cfg.shuffle, "seed": seed}
    return cache_key(model_path, pairs, precision=accelerator.mixed_precision, settings=settings)


class MetricsLog:
    """metrics.jsonl: one JSON object per line (a step's training metrics, an eval, or the run's counts)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def write_eval(self, step: int, stats: dict | None) -> None:
        if stats is not None:
            self.write({"step": step, **{f"eval/{k}": v for k, v in stats.items()}})
