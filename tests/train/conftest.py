"""Trainer fixtures: a tiny random llama (the embedded model's config and tokenizer, 2 small layers) for fast
unit tests, preference and SFT Parquet writers, and a private $CAI_HOME per test so reference caches never leak.

The real embedded model comes from tests/conftest.py's `model_path` (fails instead of skipping under CI=true).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def chat_pair(prompt: str, chosen: str, rejected: str, p_chosen: float | None = None) -> dict:
    return {"prompt": [msg("user", prompt)], "chosen": [msg("assistant", chosen)],
            "rejected": [msg("assistant", rejected)], "p_chosen": p_chosen}


def write_split(folder: Path, split: str, rows: list[dict]) -> Path:
    """rows → <folder>/<split>-00000.parquet (TRL's conversational prompt/chosen/rejected columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


SMALL_PAIRS = [chat_pair(f"Question number {i}: what is {i} plus {i}?", f"It is {2 * i}, since {i}+{i}={2 * i}.",
                         f"No idea {i}", p_chosen=0.5 + 0.05 * i) for i in range(8)]


@pytest.fixture(scope="session")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="session")
def tiny_model(model_path, tmp_path_factory) -> str:
    """A 2-layer, 64-wide llama with the embedded model's vocabulary, chat template and tokenizer; random
    weights, seeded. Fast enough for end-to-end loop tests in a second or two."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(model_path)
    cfg.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
    return str(out)


@pytest.fixture(autouse=True)
def cai_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "cai-home"
    monkeypatch.setenv("CAI_HOME", str(home))
    return home


@pytest.fixture
def pairs_dir(tmp_path) -> Path:
    """8 short chat pairs as train, the first 4 as test."""
    folder = tmp_path / "prefs"
    write_split(folder, "train", SMALL_PAIRS)
    write_split(folder, "test", SMALL_PAIRS[:4])
    return folder


def sft_rows(pairs: list[dict]) -> list[dict]:
    """The chosen side of preference rows as SFT conversations (the export's `messages` column)."""
    return [{"messages": r["prompt"] + r["chosen"]} for r in pairs]


@pytest.fixture
def sft_dir(tmp_path) -> Path:
    """The 8 pairs' chosen conversations as an SFT dataset, the first 4 as test."""
    folder = tmp_path / "sft"
    write_split(folder, "train", sft_rows(SMALL_PAIRS))
    write_split(folder, "test", sft_rows(SMALL_PAIRS[:4]))
    return folder


@pytest.fixture
def make_cfg(tmp_path):
    """RunConfig for the trainer with fp32 and a fixed seed; keyword overrides go into `train:`."""
    from cai_pipeline.config import RunConfig

    def make(model: str, data: Path, name: str = "run", **train):
        base = {"model": model, "data": str(data), "precision": "fp32", "plots": False,
                "out_dir": str(tmp_path / name / "checkpoint"), "log_dir": str(tmp_path / name / "train")}
        return RunConfig.model_validate({"out_dir": str(tmp_path / name), "seed": 0, "train": {**base, **train}})

    return make
