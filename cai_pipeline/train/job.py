"""What the trainer is given: the settings, the data, the models and the paths it writes — and nothing about
how the data was made (no stage list, no run config). The DPO reference code's `BasicTrainer(policy, config,
seed, run_dir, reference_model)` is the model; the pipeline's train stage (stages/train.py) builds a TrainJob
from a run, and anyone else can build one by hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cai_pipeline.train.config import TrainConfig


@dataclass(frozen=True)
class TrainJob:
    cfg: TrainConfig
    data: Path  # a Parquet/JSONL folder or file (formats.py reads every layout)
    model: str  # the policy to start from: a local Hugging Face folder
    checkpoint: Path  # where the trained model is saved (a plain Hugging Face folder)
    log_dir: Path  # metrics.jsonl, summary.json, plots/, state/
    rejects: Path  # the Parquet file that keeps the rows of `data` it cannot use, with their reasons
    seed: int
    # dpo/ipo: a separate reference model folder; None: the policy's starting weights
    reference: str | None = None
    # Recorded in every resumable state; a state is resumed only under the same fingerprint.
    fingerprint: dict = field(default_factory=dict)
    restart: bool = False  # discard resumable states and train from the start

    def to_json(self) -> dict:
        """The job as JSON, for the worker processes of a data-parallel training (launch.py)."""
        return {"cfg": self.cfg.model_dump(mode="json"), "data": str(self.data), "model": self.model,
                "checkpoint": str(self.checkpoint), "log_dir": str(self.log_dir), "rejects": str(self.rejects),
                "seed": self.seed, "reference": self.reference, "fingerprint": self.fingerprint,
                "restart": self.restart}

    @classmethod
    def from_json(cls, data: dict) -> TrainJob:
        paths = {k: Path(data[k]) for k in ("data", "checkpoint", "log_dir", "rejects")}
        return cls(cfg=TrainConfig.model_validate(data["cfg"]), model=data["model"], seed=data["seed"],
                   reference=data["reference"], fingerprint=data["fingerprint"], restart=data["restart"], **paths)
