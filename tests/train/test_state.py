"""Resumable states on the tiny llama, in-process: an interrupted training resumes to the very weights and
metrics of an uninterrupted one; states are kept K at a time, refused under other settings, discarded by
--restart. (The SIGKILL test on the embedded model is test_crash.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cai_pipeline.errors import UserError
from cai_pipeline.stages.train import train_run
from cai_pipeline.train import loop
from cai_pipeline.train.plots import read_metrics

# keep_final_state: these tests look at the states a finished training leaves (by default it deletes them)
COMMON = {"lr": 1e-3, "max_steps": 5, "warmup_ratio": 0.2, "batch_size": 2, "save_every": 2, "keep_states": 2,
          "keep_final_state": True}


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


class Crash(Exception):
    pass


def interrupt_at(monkeypatch, step: int) -> None:
    """Make train_step fail when it reaches 0-based step `step` (as a crash would, after the steps before it)."""
    original = loop.train_step

    def crashing(run, s):
        if s == step:
            raise Crash(f"crash at step {s + 1}")
        return original(run, s)

    monkeypatch.setattr(loop, "train_step", crashing)


def step_rows(log_dir: Path) -> list[dict]:
    return [r for r in read_metrics(log_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_resume_equals_an_uninterrupted_run(tiny_model, make_cfg, pairs_dir, sft_dir, monkeypatch, loss):
    data = sft_dir if loss == "sft" else pairs_dir
    whole = train_run(make_cfg(tiny_model, data, name="whole", loss=loss, **COMMON))
    cfg = make_cfg(tiny_model, data, name="cut", loss=loss, **COMMON)
    interrupt_at(monkeypatch, 3)  # steps 1-3 done, the state of step 2 on disk
    with pytest.raises(Crash):
        train_run(cfg)
    states = Path(cfg.train.log_dir) / "state"
    assert [p.name for p in states.iterdir()] == ["step-00000002"]
    assert [r["step"] for r in step_rows(Path(cfg.train.log_dir))] == [1, 2, 3]  # step 3 will be redone
    monkeypatch.undo()
    resumed = train_run(cfg)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 5
    assert resumed["reference"] == ("resumed" if loss == "dpo" else "none")
    a, b = _weights(whole["checkpoint"]), _weights(resumed["checkpoint"])
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    rows_a, rows_b = step_rows(Path(whole["log_dir"])), step_rows(Path(resumed["log_dir"]))
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5]  # each step exactly once
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [r["lr"] for r in rows_a] == [r["lr"] for r in rows_b]
    assert resumed["eval_before"] == whole["eval_before"] and resumed["eval_after"] == whole["eval_after"]
    # keep_states 2: the newest two, steps 4 and 5 (the end)
    assert sorted(p.name for p in states.iterdir()) == ["step-00000004", "step-00000005"]


def test_a_state_from_other_settings_is_refused_and_restart_discards_it(tiny_model, make_cfg, pairs_dir,
                                                                         monkeypatch):
    cfg = make_cfg(tiny_model, pairs_dir, **COMMON)
    interrupt_at(monkeypatch, 2)
    with pytest.raises(Crash):
        train_run(cfg)
    monkeypatch.undo()
    changed = make_cfg(tiny_model, pairs_dir, **{**COMMON, "lr": 5e-4})
    with pytest.raises(UserError, match=r"step-00000002: a resumable training state made with other settings "
                                        r"or inputs \(settings\.train\.lr\).*--restart") as err:
        train_run(changed)
    assert "\n" not in str(err.value)
    # operational settings may change: how often states are written is not what is trained
    relaxed = train_run(make_cfg(tiny_model, pairs_dir, **{**COMMON, "save_every": 3, "keep_states": 1}))
    assert relaxed["resumed_from"] == 2
    fresh = train_run(changed, restart=True)
    assert fresh["resumed_from"] is None and fresh["steps"] == 5


def test_a_state_records_everything_it_resumes_from(tiny_model, make_cfg, pairs_dir):
    s = train_run(make_cfg(tiny_model, pairs_dir, **{**COMMON, "max_steps": 2}))
    state = Path(s["log_dir"]) / "state" / "step-00000002"
    assert sorted(p.name for p in state.iterdir()) == ["cai-pipeline.json", "metrics.jsonl", "state.json",
                                                       "trainer.pt", "weights.safetensors"]
    info = json.loads((state / "state.json").read_text())
    assert info["step"] == 2 and info["world"] == 1 and info["epoch"] == 0 and info["position"] == 2
    assert info["fingerprint"]["settings"]["train"]["lr"] == 1e-3 and "data_sha256" in info["fingerprint"]["inputs"]
    trainer = torch.load(state / "trainer.pt", weights_only=True)  # plain tensors and values: no pickled code
    assert {"optimizer", "scheduler", "rng", "order", "refs"} <= trainer.keys()
    assert sorted(trainer["order"].tolist()) == list(range(8)) and trainer["refs"]["train"].shape == (8, 2)
    assert len(trainer["rng"]) == 1 and {"python", "numpy", "torch"} <= trainer["rng"][0].keys()
    lines = (state / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x).get("step") for x in lines if "loss" in json.loads(x)] == [1, 2]
    assert s["states_written"] == 1 and s["state_seconds"] > 0


def test_a_finished_training_deletes_its_states_by_default(tiny_model, make_cfg, pairs_dir):
    s = train_run(make_cfg(tiny_model, pairs_dir, **{**COMMON, "keep_final_state": False}))
    assert s["states_written"] == 3 and s["steps"] == 5  # steps 2, 4 and 5 were saved while it trained
    assert not (Path(s["log_dir"]) / "state").exists()
    assert (Path(s["checkpoint"]) / "model.safetensors").exists()


def test_a_kill_inside_a_save_leaves_the_states_before_it(tiny_model, make_cfg, pairs_dir, monkeypatch):
    """A save that dies half-way leaves only a hidden temporary folder: the next run ignores it, removes it,
    and resumes from the state before."""
    from cai_pipeline import store

    original = store.atomic_folder

    def dying(path, write):
        if path.name == "step-00000004":
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.mkdir()
            (tmp / "weights.safetensors").write_bytes(b"half")
            raise Crash("killed during the save")
        return original(path, write)

    monkeypatch.setattr(store, "atomic_folder", dying)
    cfg = make_cfg(tiny_model, pairs_dir, **COMMON)
    with pytest.raises(Crash):
        train_run(cfg)
    states = Path(cfg.train.log_dir) / "state"
    assert sorted(p.name for p in states.iterdir()) == [".step-00000004.tmp", "step-00000002"]
    monkeypatch.undo()
    resumed = train_run(cfg)
    assert resumed["resumed_from"] == 2
    assert not any(p.name.startswith(".") for p in states.iterdir())
