"""The `train:` section of a run config. Defaults follow the papers; docs/config-train.md cites each one."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# β when the config leaves it out. DPO: Rafailov et al. 2023 (β = 0.1 in their experiments). IPO: the paper
# sweeps τ and names no default; 0.1 is TRL's. SimPO: princeton-nlp/SimPO's `beta: 2.0`.
DEFAULT_BETA = {"dpo": 0.1, "ipo": 0.1, "simpo": 2.0}
# SimPO's margin is configured in its repository as γ/β (`gamma_beta_ratio: 0.25`), so γ follows β.
SIMPO_GAMMA_BETA_RATIO = 0.25


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Where things are
    data: str | None = Field(None, description="Parquet/JSONL folder or file; default <out_dir>/datasets/preferences "
                             "(loss sft: <out_dir>/datasets/sft)")
    out_dir: str | None = Field(None, description="checkpoint folder; default <out_dir>/checkpoint")
    log_dir: str | None = Field(None, description="metrics.jsonl, plots, summary; default <out_dir>/train")
    model: str | None = Field(None, description="policy to train; default: the run's model")
    reference_model: str | None = Field(None, description="dpo/ipo reference; default: the policy's starting weights")
    seed: int | None = Field(None, ge=0, lt=2**32, description="default: the run's seed")
    # The objective
    loss: Literal["dpo", "ipo", "simpo", "orpo", "sft"] = Field(
        "dpo", description="dpo/ipo use cached reference log-probs; sft: supervised, on a messages column")
    sft_turns: Literal["last", "all"] = Field("last", description="sft: train on the last assistant turn, or all")
    beta: float | None = Field(None, gt=0, description="default per loss: dpo 0.1, ipo 0.1, simpo 2.0")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo: robust/cDPO smoothing ε")
    use_soft_labels: bool = Field(False, description="dpo: train on the judge's p_chosen as the target")
    gamma: float | None = Field(None, description="simpo margin; default 0.25·beta")
    lam: float = Field(0.1, ge=0, description="orpo: weight of the odds-ratio term")
    # The optimiser and schedule
    lr: float = Field(1e-6, gt=0, description="peak learning rate (AdamW); 1e-6 as in the DPO paper")
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps spent warming up linearly")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm; null: no clipping")
    epochs: int = Field(1, gt=0, description="passes over the training pairs")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    batch_size: int = Field(4, gt=0, description="pairs per forward pass (per device)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    shuffle: bool = Field(True, description="reshuffle the pairs each epoch (seeded); false keeps file order")
    eval_batch_size: int | None = Field(None, gt=0, description="test split batches; default: 2·batch_size")
    eval_every: int | None = Field(None, gt=0, description="steps; the test split is always scored before and after")
    # Sequences
    max_length: int = Field(512, gt=1, description="tokens of prompt + one completion; longer pairs are truncated")
    max_prompt_length: int = Field(256, gt=0, description="an over-long pair keeps this many prompt tokens (its end)")
    # Machinery
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast where supported")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, ~30% slower")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters (merged into the saved checkpoint)")
    save_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(None, description="default: as trained")
    reference_cache: bool = Field(True, description="dpo/ipo: keep reference log-probs under $CAI_HOME/refcache")
    plots: bool = Field(True, description="PNG plots of metrics.jsonl in log_dir at the end")
    # Resumable state and processes
    save_every: int | None = Field(500, gt=0, description="steps between resumable states in log_dir/state "
                                   "(and one at the end); null: none (a crash trains again from the start)")
    keep_states: int = Field(2, gt=0, description="newest resumable states kept while training")
    keep_final_state: bool = Field(False, description="keep the last state once the checkpoint is written (by "
                                   "default a finished training deletes its states: they only resume)")
    nproc: int = Field(1, gt=0, description="data-parallel processes on this machine (torchrun); batch_size is per process")
    accelerate_config: str | None = Field(None, description="launch the processes with `accelerate launch` and this "
                                          "config (FSDP, DeepSpeed) instead of torchrun")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be below max_length, so every completion keeps some tokens")
        if self.reference_model is not None and not self.needs_reference:
            raise ValueError(f"reference_model applies to loss: dpo or ipo (loss is {self.loss}, which has none)")
        if self.loss == "sft":
            # The preference settings have nothing to act on here, and one run config serves both CAI phases
            # (SL-CAI, then preference training from its checkpoint), so they are left alone rather than refused.
            return self
        if self.loss != "dpo" and (self.label_smoothing or self.use_soft_labels):
            raise ValueError(f"label_smoothing and use_soft_labels apply to loss: dpo only (loss is {self.loss})")
        if self.label_smoothing and self.use_soft_labels:
            raise ValueError("use either label_smoothing or use_soft_labels: both set the target probability")
        if self.loss == "orpo" and self.beta is not None:
            raise ValueError("loss: orpo has no beta; its weight is lam")
        if self.loss != "simpo" and self.gamma is not None:
            raise ValueError(f"gamma applies to loss: simpo only (loss is {self.loss})")
        return self

    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.loss, 0.0)

    def resolved_gamma(self) -> float:
        return self.gamma if self.gamma is not None else SIMPO_GAMMA_BETA_RATIO * self.resolved_beta()

    @property
    def needs_reference(self) -> bool:
        return self.loss in ("dpo", "ipo")

    @property
    def is_sft(self) -> bool:
        return self.loss == "sft"
