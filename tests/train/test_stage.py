"""Training as a stage of the run: a finished, unchanged training is not repeated (a resumed run does not
retrain), a checkpoint from other settings is never replaced silently, and manifest.json records it."""

from __future__ import annotations

import json

import pytest

import cai_pipeline.train
from cai_pipeline.cli import main


@pytest.fixture
def config(tiny_model, pairs_dir, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"out_dir: {tmp_path / 'run'}\nmodel: {tiny_model}\ntrain:\n  data: {pairs_dir}\n"
                    "  max_steps: 1\n  precision: fp32\n  plots: false\n")
    return str(path)


def no_training(*args, **kwargs):
    raise AssertionError("trained again")


def test_an_unchanged_training_is_not_repeated(config, tmp_path, capsys, monkeypatch):
    assert main(["train", config]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["package"] == "cai-pipeline" and manifest["stages"]["train"]["summary"]["steps"] == 1
    assert manifest["last_run"] == {"train": "ran"}
    capsys.readouterr()
    monkeypatch.setattr(cai_pipeline.train, "train", no_training)
    assert main(["train", config]) == 0
    out = capsys.readouterr().out
    assert "already trained with these settings" in out and "1 steps" in out
    assert main(["run", config, "--stages", "train"]) == 0  # the same stage from `cai run`
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["last_run"] == {"train": "already done"}


def test_changed_settings_never_replace_a_checkpoint_silently(config, tmp_path, capsys):
    assert main(["train", config]) == 0
    weights = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", config, "train.lr=1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "settings.train.lr" in err and "--restart" in err
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == weights
    assert main(["train", config, "train.lr=1e-3", "--restart"]) == 0
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() != weights
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["train"]["fingerprint"]["settings"]["train"]["lr"] == 1e-3


def test_new_data_is_a_change(config, pairs_dir, tmp_path, capsys):
    from .conftest import SMALL_PAIRS, write_split

    assert main(["train", config]) == 0
    write_split(pairs_dir, "train", SMALL_PAIRS[:5])
    capsys.readouterr()
    assert main(["train", config]) == 2
    assert "inputs.data_sha256" in capsys.readouterr().err


def test_the_reference_model_is_an_input(config, tiny_model, tmp_path, capsys):
    """train.reference_model's weight files are part of what the training read: other weights under the same
    path are a change, refused like any other."""
    import os
    import shutil

    reference = tmp_path / "reference"
    shutil.copytree(tiny_model, reference)
    assert main(["train", config, f"train.reference_model={reference}"]) == 0
    inputs = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["train"]["fingerprint"]["inputs"]
    assert inputs["reference_model"]["model"] == str(reference.resolve())
    weights = reference / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    capsys.readouterr()
    assert main(["train", config, f"train.reference_model={reference}"]) == 2
    assert "inputs.reference_model" in capsys.readouterr().err
