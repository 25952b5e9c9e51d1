"""The trainer: a plain loop on accelerate, readable top to bottom.

    train_here(job) [in each process launch.py started, or the only one] → load the policy → read and
    tokenise the data (unusable rows → rejects/train/) → resume the newest state, or compute the reference
    log-probs (dpo/ipo; cached) → [LoRA] → AdamW + warmup/decay → each step: this process's micro-batches
    (batches.StepPlan), score, loss, backward (gradients synced on the last), clip, step → metrics.jsonl; eval
    every N; a resumable state every save_every and at the end → checkpoint + plots + summary.

Every loss gives per-example contributions and units (pairs, or tokens for sft); a step's loss is Σ
contributions / Σ units over the whole step, all processes together, so its gradient is the same however the
step is split into micro-batches or processes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather_object

from cai_pipeline.console import TrainProgress
from cai_pipeline.errors import UserError
from cai_pipeline.records import RejectRecord
from cai_pipeline.store import TrainLayout, atomic_write_json, atomic_write_text, mark_folder, write_parquet
from cai_pipeline.train.batches import StepPlan, epoch_order, shard_batches
from cai_pipeline.train.config import TrainConfig
from cai_pipeline.train.data import collate_pairs, end_token_ids, find_splits, tokenize_rows
from cai_pipeline.train.formats import read_split
from cai_pipeline.train.job import TrainJob
from cai_pipeline.train.losses import dpo_loss, ipo_loss, orpo_loss, sft_loss, simpo_loss
from cai_pipeline.train.modeling import MODEL_INPUTS, PairScorer, add_lora, load_policy, save_checkpoint
from cai_pipeline.train.reference import cache_key, reference_logps
from cai_pipeline.train.sft import collate_conversations, tokenize_conversations
from cai_pipeline.train.state import Saved, TrainStates, capture_rng, restore_rng

log = logging.getLogger(__name__)


def train_here(job: TrainJob) -> dict:
    """Train in this process (one of the workers, or the only one)."""
    from accelerate.utils import set_seed

    cfg, seed, fingerprint = job.cfg, job.seed, job.fingerprint
    files = TrainLayout(job.log_dir, job.checkpoint, job.rejects)
    accelerator = make_accelerator(cfg)
    set_seed(seed)
    data_files = find_splits(job.data)  # a wrong path fails here, before minutes of model loading
    tokenizer, lm = load_policy(job.model)
    data = load_data(job.data, data_files, tokenizer, lm, cfg)
    states = TrainStates(files, cfg.keep_states)
    if accelerator.is_main_process:
        mark_folder(files.log_dir)  # ours from now on: a later training may write here again
        write_parquet(files.rejects, data.rejects, RejectRecord)
        if job.restart:
            states.clear()
        states.tidy()
    accelerator.wait_for_everyone()
    saves = keeps_states(accelerator, cfg)
    saved = states.latest(fingerprint, accelerator.num_processes) if saves else None
    plan = StepPlan(len(data.splits["train"]), cfg.batch_size, cfg.grad_accum, accelerator.num_processes)
    run = TrainRun(cfg, accelerator, data, plan, seed, tokenizer.pad_token_id, states if saves else None, fingerprint)
    if saved is not None:
        run.refs, ref_status, ref_seconds = saved.trainer["refs"], "resumed" if cfg.needs_reference else "none", 0.0
        log.info("resuming from %s", saved.path)
    else:
        run.refs, ref_status, ref_seconds = reference_pass(run, lm, tokenizer, job.reference or job.model,
                                                           separate=job.reference is not None)
    prepare(run, lm, saved)
    run.metrics = MetricsLog(files.metrics, enabled=accelerator.is_main_process,
                             lines=saved.metrics if saved else None)
    if saved is None:
        run.metrics.write({"step": 0, "counts": data.counts, "reference": ref_status})
    result = fit(run, saved)

    accelerator.wait_for_everyone()
    save_final(run, tokenizer, job.checkpoint)
    if accelerator.is_main_process and cfg.plots:
        from cai_pipeline.train.plots import plot_metrics

        plot_metrics(files.metrics, files.plots)
    summary = {"checkpoint": str(job.checkpoint), "log_dir": str(job.log_dir), "loss_type": cfg.loss,
               "reference": ref_status, "reference_seconds": ref_seconds, "counts": data.counts,
               "processes": accelerator.num_processes, "resumed_from": saved.step if saved else None, **result}
    if accelerator.is_main_process:
        atomic_write_json(files.summary, summary)
        if not cfg.keep_final_state:
            # Done: a state only resumes an unfinished training, and each is ~3x the model (weights + AdamW's
            # two moments). A kill before the stage is recorded done trains again, to the same weights.
            states.clear()
    return summary


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class TrainData:
    splits: dict[str, Any]  # "train" (always) and "test": a data.PairSet, or an sft.SFTSet
    rejects: list[dict]
    counts: dict[str, dict]  # per split: rows, truncations, rejected by reason


@dataclass
class TrainRun:
    """What the loop works with, built once: the loop's only other state is the step counter."""

    cfg: TrainConfig
    accelerator: Any
    data: TrainData
    plan: StepPlan
    seed: int
    pad_id: int
    states: TrainStates | None  # None: no resumable states (FSDP/DeepSpeed)
    fingerprint: dict
    refs: dict | None = None  # split → (N, 2) reference log-probs (dpo/ipo)
    scorer: Any = None  # the prepared (wrapped) PairScorer
    optimizer: Any = None
    scheduler: Any = None
    total_steps: int = 0
    metrics: MetricsLog | None = None

    def order(self, epoch: int) -> np.ndarray:
        return epoch_order(self.plan.n, seed=self.seed, epoch=epoch, shuffle=self.cfg.shuffle)

    def batch(self, split: str, idx: np.ndarray) -> dict[str, torch.Tensor]:
        collate = collate_conversations if self.cfg.is_sft else collate_pairs
        batch = collate([self.data.splits[split][int(i)] for i in idx], self.pad_id)
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def split_batches(self, split: str, rank: int) -> list[np.ndarray]:
        """Process `rank`'s batches of a split as the reference pass scores them: the training split in the
        first epoch's micro-batches (see reference.compute_reference), the test split as evaluation does."""
        if split == "train":
            return self.plan.epoch_batches(self.order(0), rank)
        size = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        return shard_batches(len(self.data.splits[split]), size, rank, self.accelerator.num_processes)


def prepare(run: TrainRun, lm, saved: Saved | None) -> None:
    """LoRA, the optimizer and schedule, the state to resume (if any), then accelerate's wrapping."""
    cfg = run.cfg
    if cfg.lora is not None:
        lm = add_lora(lm, cfg.lora)
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    scorer = PairScorer(lm)
    optimizer = torch.optim.AdamW([p for p in scorer.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    run.total_steps = cfg.max_steps or cfg.epochs * run.plan.steps_per_epoch
    # Not prepared by accelerate, which would step it once per process: our steps are already global.
    scheduler = make_scheduler(optimizer, cfg, run.total_steps)
    if saved is not None:
        if not np.array_equal(saved.trainer["order"].numpy(), run.order(saved.info["epoch"])):
            raise UserError(f"{saved.path}: the state's data order is not the one this run computes (another "
                            "torch version?); `cai train CONFIG --restart` starts afresh")
        saved.load_weights(lm)
        optimizer.load_state_dict(saved.trainer["optimizer"])
        scheduler.load_state_dict(saved.trainer["scheduler"])
        restore_rng(saved.trainer["rng"][run.accelerator.process_index])
    run.scorer, run.optimizer = run.accelerator.prepare(scorer, optimizer)
    run.scheduler = scheduler


# ---------------------------------------------------------------------------------------------- the loop


def fit(run: TrainRun, saved: Saved | None) -> dict:
    cfg = run.cfg
    progress = dict(saved.info["progress"]) if saved else {"seconds": 0.0, "tokens": 0, "examples": 0,
                                                           "state_seconds": 0.0, "states": 0}
    if saved is None:
        progress["eval_before"] = evaluate(run)
        run.metrics.write_eval(0, progress["eval_before"])
    step, last = (saved.step, saved.info["last"]) if saved else (0, None)
    shown = TrainProgress(run.total_steps, step, show=run.accelerator.is_main_process)
    while step < run.total_steps:
        start = time.perf_counter()
        row, tokens, examples = train_step(run, step)
        seconds = time.perf_counter() - start
        step += 1
        progress.update(seconds=progress["seconds"] + seconds, tokens=progress["tokens"] + tokens,
                        examples=progress["examples"] + examples)
        last = {"step": step, **row, "tokens/s": tokens / seconds}
        run.metrics.write(last)
        log.debug("step %d/%d loss %.4f", step, run.total_steps, last["loss"])
        shown.step(step, last["loss"])
        if cfg.eval_every and step % cfg.eval_every == 0 and step < run.total_steps:
            run.metrics.write_eval(step, evaluate(run))
        due = cfg.save_every and (step % cfg.save_every == 0 or step == run.total_steps)
        if due and run.states is not None:
            save_state(run, step, progress, last)
    after = evaluate(run)
    run.metrics.write_eval(step, after)
    seconds = max(progress["seconds"], 1e-9)
    return {"steps": step, "final_loss": last["loss"], "reward_accuracy": last.get("rewards/accuracies"),
            "train_seconds": progress["seconds"], "tokens_per_s": progress["tokens"] / seconds,
            "examples_per_s": progress["examples"] / seconds,
            **({} if cfg.is_sft else {"pairs_per_s": progress["examples"] / seconds}),
            "state_seconds": progress["state_seconds"], "states_written": progress["states"],
            "eval_before": progress["eval_before"], "eval_after": after}


def train_step(run: TrainRun, step: int) -> tuple[dict, int, int]:
    """Optimizer step `step` (0-based): its metrics row, and its tokens and examples over all processes."""
    acc, cfg = run.accelerator, run.cfg
    epoch, within = divmod(step, run.plan.steps_per_epoch)
    micro = [run.batch("train", idx) for idx in run.plan.micro_batches(run.order(epoch), within, acc.process_index)]
    units = acc.reduce(torch.tensor(sum(batch_units(b, cfg) for b in micro), device=acc.device), "sum").item()
    parts = []
    for i, batch in enumerate(micro):
        # Gradients are all-reduced once per step, on the last micro-batch's backward.
        with contextlib.nullcontext() if i == len(micro) - 1 else acc.no_sync(run.scorer):
            total, stats = batch_loss(run.scorer, batch, run.refs.get("train"), cfg)
            # DDP averages the processes' gradients; scaling each share by their number makes the step's
            # gradient that of Σ contributions / Σ units over the whole step.
            acc.backward(total * acc.num_processes / units)
        parts.append(stats)
    grad_norm = acc.clip_grad_norm_(run.scorer.parameters(), cfg.max_grad_norm or math.inf)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    tokens = acc.reduce(torch.tensor(sum(int(b["n_tokens"]) for b in micro), device=acc.device), "sum").item()
    row = {**summarise(parts), "lr": run.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
    return row, tokens, len(run.plan.step_examples(run.order(epoch), within))


def batch_units(batch: dict, cfg: TrainConfig) -> int:
    """What a step's loss is a mean over: trained tokens (sft) or pairs."""
    return int(batch["completion_mask"].sum()) if cfg.is_sft else len(batch["idx"])


def batch_loss(scorer, batch, ref_table, cfg) -> tuple[torch.Tensor, dict]:
    """The sum of the batch's loss contributions (to backpropagate, before the step's normalisation) and its
    detached per-example stats, `loss_sum` and `units` among them (summarise divides their sums)."""
    logps, counts = scorer(**{k: batch[k] for k in MODEL_INPUTS})
    if cfg.is_sft:
        contributions, units = sft_loss(logps.float(), counts)
        stats = {"length/completion": counts.float()}
    else:
        ref = ref_table[batch["idx"].cpu()].to(logps.device) if ref_table is not None else None
        contributions, stats = pair_losses(cfg, logps.float(), counts, ref, batch["target"])
        units = torch.ones_like(contributions)
    stats = {**stats, "loss_sum": contributions, "units": units}
    return contributions.sum(), {k: v.detach().float().cpu() for k, v in stats.items()}


# Each preference loss on a batch of pairs: (cfg, chosen and rejected log-prob sums (B,), their token counts
# (B,), reference sums (B, 2) or None, soft targets (B,)) → (per-pair losses, implicit rewards of chosen and
# rejected, the log-probs to report). One entry per `train.loss` but sft (tests/train/test_loop.py checks).


def _dpo(cfg, pc, pr, nc, nr, ref, target):
    soft = target.to(pc.device) if cfg.use_soft_labels else None
    losses, rw_c, rw_r = dpo_loss(pc, pr, ref[:, 0], ref[:, 1], beta=cfg.resolved_beta(),
                                  label_smoothing=cfg.label_smoothing, target=soft)
    return losses, rw_c, rw_r, (pc, pr)


def _ipo(cfg, pc, pr, nc, nr, ref, target):  # length-averaged, as the IPO authors' implementation
    shown = (pc / nc, pr / nr)
    return (*ipo_loss(*shown, ref[:, 0] / nc, ref[:, 1] / nr, beta=cfg.resolved_beta()), shown)


def _simpo(cfg, pc, pr, nc, nr, ref, target):
    shown = (pc / nc, pr / nr)
    return (*simpo_loss(*shown, beta=cfg.resolved_beta(), gamma=cfg.resolved_gamma()), shown)


def _orpo(cfg, pc, pr, nc, nr, ref, target):
    # The SFT term is the chosen completion's mean token NLL, per pair (so accumulation-invariant).
    shown = (pc / nc, pr / nr)
    losses, _ = orpo_loss(*shown, -shown[0], lam=cfg.lam)
    rw_c, rw_r = (cfg.lam * s.detach() for s in shown)
    return losses, rw_c, rw_r, shown


PAIR_LOSSES = {"dpo": _dpo, "ipo": _ipo, "simpo": _simpo, "orpo": _orpo}


def pair_losses(cfg: TrainConfig, logps, counts, ref, target) -> tuple[torch.Tensor, dict]:
    """logps, counts: (2B,) completion log-prob sums and token counts, chosen rows first; ref: (B, 2) reference
    sums [chosen, rejected] or None; target: (B,) p_chosen. Returns per-pair losses (B,) and stats (B,) each."""
    if cfg.loss not in PAIR_LOSSES:
        raise ValueError(f"train.loss={cfg.loss!r} has no entry in PAIR_LOSSES (train/loop.py)")
    pc, pr = logps.chunk(2)
    nc, nr = counts.float().clamp(min=1).chunk(2)
    losses, rw_c, rw_r, shown = PAIR_LOSSES[cfg.loss](cfg, pc, pr, nc, nr, ref, target)
    stats = {"rewards/chosen": rw_c, "rewards/rejected": rw_r, "rewards/accuracies": (rw_c > rw_r).float(),
             "rewards/margins": rw_c - rw_r, "logps/chosen": shown[0], "logps/rejected": shown[1],
             "length/chosen": nc, "length/rejected": nr}
    return losses, {k: v.detach().float() for k, v in stats.items()}


def summarise(parts: list[dict]) -> dict:
    """Per-example stats of micro-batches on every process → metrics: `loss` is Σ contributions / Σ units (the
    mean over pairs, or over tokens for sft), every other stat the mean over examples. Processes with nothing
    to add (evaluation shares can be empty) still take part: this gathers."""
    local = {k: torch.cat([p[k] for p in parts]).tolist() for k in parts[0]} if parts else {}
    merged: dict[str, list[float]] = {}
    for share in gather_object([local]):
        for key, values in share.items():
            merged.setdefault(key, []).extend(values)
    loss = sum(merged.pop("loss_sum")) / sum(merged.pop("units"))
    return {"loss": loss, **{k: sum(v) / len(v) for k, v in merged.items()}}


@torch.no_grad()
def evaluate(run: TrainRun) -> dict | None:
    """The test split's metrics (None when there is none), each process scoring its share with the bare model
    (its DDP wrapper would make processes with unequal shares wait on each other)."""
    if "test" not in run.data.splits:
        return None
    scorer = run.accelerator.unwrap_model(run.scorer).eval()
    parts = []
    for idx in run.split_batches("test", run.accelerator.process_index):
        with run.accelerator.autocast():
            parts.append(batch_loss(scorer, run.batch("test", idx), run.refs.get("test"), run.cfg)[1])
    scorer.train()
    return summarise(parts)


def save_state(run: TrainRun, step: int, progress: dict, last: dict) -> None:
    acc = run.accelerator
    rng = gather_object([capture_rng()])  # every process's, in rank order
    if acc.is_main_process:
        start = time.perf_counter()
        epoch, within = divmod(step, run.plan.steps_per_epoch)
        info = {"epoch": epoch, "position": within, "world": acc.num_processes, "fingerprint": run.fingerprint,
                "progress": progress, "last": last}
        run.states.save(step, lm=acc.unwrap_model(run.scorer).lm, optimizer=run.optimizer,
                        scheduler=run.scheduler, rng=rng, order=run.order(epoch), refs=run.refs,
                        metrics=run.metrics.lines, info=info)
        progress["state_seconds"] += time.perf_counter() - start
        progress["states"] += 1


def save_final(run: TrainRun, tokenizer, out: Path) -> None:
    """The checkpoint: a plain Hugging Face folder. Under FSDP/DeepSpeed the full weights are gathered first
    (every process takes part); otherwise rank 0 saves its (identical) copy, LoRA merged in."""
    acc = run.accelerator
    if sharded(acc):
        weights = acc.get_state_dict(run.scorer)
        if acc.is_main_process:
            from cai_pipeline.store import atomic_folder

            lm = acc.unwrap_model(run.scorer).lm
            state = {k.removeprefix("lm."): v for k, v in weights.items()}
            atomic_folder(out, lambda tmp: (lm.save_pretrained(tmp, state_dict=state), tokenizer.save_pretrained(tmp)))
    elif acc.is_main_process:
        save_checkpoint(acc.unwrap_model(run.scorer).lm, tokenizer, out, run.cfg.save_dtype)
    acc.wait_for_everyone()


# ---------------------------------------------------------------------------------------------- set-up


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
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    # accelerate keeps its precision in process-global state and refuses a change; one process may train more
    # than once (the pipeline, tests), so start that state afresh. The process group (PartialState) stays.
    AcceleratorState._reset_state()
    mixed = {"bf16": "bf16", "fp32": "no"}[resolve_precision(cfg.precision)]
    # The model's only buffers (rotary frequencies) never change: broadcasting them before every forward, as
    # DDP does by default, would be a collective for nothing. Accumulation is ours (see train_step).
    return Accelerator(mixed_precision=mixed, kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


def sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def keeps_states(accelerator, cfg: TrainConfig) -> bool:
    """Resumable states are written for one process or DDP; under FSDP/DeepSpeed each process holds a shard of
    the optimizer, which our state format does not gather (yet): those runs keep only the final checkpoint."""
    if sharded(accelerator):
        if cfg.lora is not None:
            raise UserError("train.lora: LoRA under FSDP/DeepSpeed is not supported; use DDP (no accelerate_config)")
        log.warning("FSDP/DeepSpeed: no resumable states are written (only the final checkpoint)")
        return False
    return True


def make_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def load_data(path: Path, files: dict[str, list[Path]], tokenizer, lm, cfg: TrainConfig) -> TrainData:
    """Read every split in whatever layout it is (formats.py), tokenise it; count and keep what is rejected."""
    end_ids = end_token_ids(tokenizer, getattr(lm, "generation_config", None))
    lengths = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length, "end_ids": end_ids}
    data = TrainData({}, [], {})
    for name, split_files in files.items():
        if not split_files:
            continue
        read = read_split(split_files, "sft" if cfg.is_sft else "preference")
        examples = tokenize_conversations(read.rows, tokenizer, turns=cfg.sft_turns, **lengths) if cfg.is_sft \
            else tokenize_rows(read.rows, tokenizer, **lengths)
        rejects = read.rejects + examples.rejects
        data.rejects += rejects
        data.counts[name] = {**examples.counts, "rejected": dict(Counter(r["reason"] for r in rejects))}
        if len(examples):
            data.splits[name] = examples
    if "train" not in data.splits:
        why = f" (every row was rejected: {data.rejects[0]['detail']})" if data.rejects else ""
        raise UserError(f"train.data: {path} has no usable training rows{why}; export a dataset first or fix the file")
    if cfg.use_soft_labels and not cfg.is_sft and any(math.isnan(t) for s in data.splits.values() for t in s.target):
        raise UserError(f"train.use_soft_labels: {path} has rows without p_chosen (no judge ran); "
                        "set train.use_soft_labels=false or use train.label_smoothing")
    return data


def reference_pass(run: TrainRun, lm, tokenizer, model_path: str, *, separate: bool) -> tuple[dict, str, float]:
    """dpo/ipo: the reference log-probs of every pair of every split, split across the processes and gathered
    (or read from the cache). The reference is the policy as loaded, or train.reference_model (`separate`)."""
    if not run.cfg.needs_reference:
        return {}, "none", 0.0
    start, acc = time.perf_counter(), run.accelerator
    ref_lm = load_reference(model_path, tokenizer) if separate else lm
    refs, status = {}, "none"
    for name, pairs in run.data.splits.items():
        key = ref_key(model_path, pairs, run, [run.split_batches(name, r) for r in range(acc.num_processes)])
        mine = (run.batch(name, idx) for idx in run.split_batches(name, acc.process_index))
        refs[name], status = reference_logps(acc, ref_lm, mine, len(pairs), key=key)
    if separate:
        del ref_lm
    gc.collect()
    return refs, status, time.perf_counter() - start


def load_reference(path: str, tokenizer):
    """train.reference_model: it scores our token ids, so it must share the policy's vocabulary."""
    ref_tokenizer, ref_lm = load_policy(path, key="train.reference_model")
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"train.reference_model: {path} has another vocabulary than train.model; DPO compares "
                        "log-probs of the same token ids, so give a reference with the policy's tokenizer")
    return ref_lm


def ref_key(model_path: str, pairs, run: TrainRun, batches: list[list[np.ndarray]]) -> str | None:
    """The cache key; None when caching is off. The batches count (every process's): in bf16 a pair's log-probs
    depend, slightly, on the batch it was scored in."""
    if not run.cfg.reference_cache:
        return None
    layout = json.dumps([[b.tolist() for b in rank] for rank in batches])
    settings = {"max_length": run.cfg.max_length, "max_prompt_length": run.cfg.max_prompt_length,
                "batches": layout}
    return cache_key(model_path, pairs, precision=run.accelerator.mixed_precision, settings=settings)


class MetricsLog:
    """metrics.jsonl: one JSON object per line (a step's training metrics, an eval, or the run's counts). A
    resumed run starts from the lines its state saved, so every step is in the file exactly once."""

    def __init__(self, path: Path, enabled: bool = True, lines: list[str] | None = None):
        self.path, self.enabled, self.lines = path, enabled, list(lines or [])
        if enabled:
            atomic_write_text(path, "".join(self.lines))

    def write(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        self.lines.append(line)
        if self.enabled:
            with self.path.open("a") as f:
                f.write(line)

    def write_eval(self, step: int, stats: dict | None) -> None:
        if stats is not None:
            self.write({"step": step, **{f"eval/{k}": v for k, v in stats.items()}})
