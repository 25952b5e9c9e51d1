"""The `train:` section of a run config. Defaults follow the papers; README's config reference cites each."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LoraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str | None = Field(None, description="preference Parquet folder/file; default <out_dir>/datasets/preferences")
    out_dir: str | None = Field(None, description="checkpoint folder; default <out_dir>/checkpoint")
    model: str | None = Field(None, description="policy to train; default: the run's model")
    loss: Literal["dpo", "ipo", "simpo", "orpo"] = "dpo"
    beta: float | None = Field(None, gt=0, description="default per loss: dpo/ipo 0.1, simpo 2.0")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    use_soft_labels: bool = False
    gamma: float | None = Field(None, description="simpo margin; default 0.25·beta")
    lam: float = Field(0.1, ge=0)
    lr: float = Field(5e-7, gt=0)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(512, gt=0)
    max_prompt_length: int = Field(256, gt=0)
    lora: LoraConfig | None = None
