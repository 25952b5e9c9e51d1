"""Data-parallel training on CPU: `cai train --nproc 2` (torchrun, gloo) with batch 2 per process takes the
same steps as one process with batch 4 — the same losses (≤ 1e-5, fp32) and the same weights (≤ 1e-5) after 3
steps, for dpo and sft — while the parent process keeps the folder and the manifest and only rank 0 writes.
About 30 s per loss here (two worker processes import torch and transformers)."""

from __future__ import annotations

import json

import pytest
import torch

from cai_pipeline.cli import main
from cai_pipeline.train.plots import read_metrics

from .conftest import chat_pair, sft_rows, write_split

ROWS = [chat_pair(f"Question {i}: what is {i} times three?", f"It is {3 * i}." + " Indeed." * (i % 3), f"No {i}")
        for i in range(12)]


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


@pytest.fixture
def config(tiny_model, tmp_path):
    def make(loss: str) -> str:
        data = tmp_path / "data"
        rows = sft_rows(ROWS) if loss == "sft" else ROWS
        write_split(data, "train", rows)
        write_split(data, "test", rows[:5])  # 5 test rows: the processes' evaluation shares differ (3 and 2)
        path = tmp_path / "run.yaml"
        path.write_text(f"model: {tiny_model}\ntrain:\n  data: {data}\n  loss: {loss}\n  max_steps: 3\n"
                        "  precision: fp32\n  plots: false\n  lr: 0.001\n  warmup_ratio: 0.0\n  grad_accum: 1\n"
                        "  keep_final_state: true\n")  # the states are looked at below
        return str(path)

    return make


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_two_processes_take_the_steps_of_one(config, tiny_model, tmp_path, capfd, loss):
    cfg = config(loss)
    assert main(["train", cfg, f"out_dir={tmp_path / 'one'}", "train.batch_size=4"]) == 0
    assert main(["train", cfg, "--nproc", "2", f"out_dir={tmp_path / 'two'}", "train.batch_size=2"]) == 0
    out = capfd.readouterr()
    said = out.out + out.err  # one progress line per run: in the two-process run only rank 0 speaks
    assert said.count("train: step 3/3 (100%)") == 2 and "[rank 1]" not in said
    runs = {name: tmp_path / name for name in ("one", "two")}
    metrics = {name: read_metrics(run / "train" / "metrics.jsonl") for name, run in runs.items()}
    steps = {name: [r for r in rows if "loss" in r] for name, rows in metrics.items()}
    assert [r["step"] for r in steps["two"]] == [1, 2, 3]  # written once, by rank 0
    for a, b in zip(steps["one"], steps["two"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)
    assert steps["one"][2]["loss"] < steps["one"][0]["loss"]  # it trained
    evals = {name: [r["eval/loss"] for r in rows if "eval/loss" in r] for name, rows in metrics.items()}
    assert evals["one"] == pytest.approx(evals["two"], abs=1e-5) and len(evals["two"]) == 2
    wa, wb = _weights(runs["one"] / "checkpoint"), _weights(runs["two"] / "checkpoint")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5
    start = _weights(tiny_model)
    assert max((wa[k] - start[k]).abs().max().item() for k in wa) > 1e-4  # the weights did move
    manifest = json.loads((runs["two"] / "manifest.json").read_text())  # the parent's, as for one process
    entry = manifest["stages"]["train"]
    assert entry["fingerprint"]["settings"]["train"]["nproc"] == 2 and entry["summary"]["processes"] == 2
    assert manifest["last_run"] == {"train": "ran"}
    assert [p.name for p in (runs["two"] / "train" / "state").iterdir()] == ["step-00000003"]
    state = json.loads((runs["two"] / "train" / "state" / "step-00000003" / "state.json").read_text())
    assert state["world"] == 2
    trainer = torch.load(runs["two"] / "train" / "state" / "step-00000003" / "trainer.pt", weights_only=True)
    assert len(trainer["rng"]) == 2  # each process's RNG states, gathered by rank 0


def test_under_another_launcher_it_says_how_to_launch(config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", config("dpo"), "--nproc", "2", f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--nproc N" in err
