"""`cai iterate` on the real embedded model, through the CLI in a subprocess, at the smallest settings that run
every stage (3 prompts a round, 8-token responses, one revision, 3 training steps, an audit of 2 prompts on
one principle): an SL round and one RL round finish with checkpoints, audits, a recorded gate decision and a
best model, and the report lists both rounds. Then the same command killed with SIGKILL while round 01-rl
trains, and run again, ends with the preference rows and weights of round 01-rl run uninterrupted. Only
invariants are asserted: never what the model says, nor which way the gate goes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from tests.conftest import REPO

pytestmark = pytest.mark.model

TINY = """\
seed: 0
model: {model}
shard_size: 64
engine: {{kind: hf}}
prompts: {{limit: 6}}
sample: {{n: 2, max_tokens: 8}}
revise: {{rounds: 1, few_shot: 0, max_tokens: 8}}
judge: {{principles: 1, min_margin: 0.0, drop_inconsistent: false}}
export: {{drop_truncated: false, test_fraction: 0.0}}
train: {{loss: dpo, use_soft_labels: true, max_steps: 3, batch_size: 2, max_length: 48, max_prompt_length: 24,
         precision: fp32, save_every: 1, keep_states: 1, plots: false}}
audit: {{limit: 2, principles: [violence], bootstrap: 100, max_tokens: 8, refusal: false}}
iterate: {{rounds: 1, audit_base: false}}
"""
# audit_base and refusal are off: each audit costs 1-1.5 min at this box's usual load (tests/audit/test_real.py
# covers the refusal judge on the real model), and the audit against the base is
# one more run_pipeline of the audit stage alone (tests/test_iterate.py checks the record it feeds).
LIMIT_S = 1500  # one whole command on a loaded two-core machine


def start(config: Path, out: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "cai_pipeline.cli", "iterate", str(config), f"out_dir={out}"],
                                cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"}, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)


def finish(config: Path, out: Path, log: Path) -> str:
    proc = start(config, out, log)
    try:
        rc = proc.wait(timeout=LIMIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-4000:]
    return text


@pytest.fixture(scope="module")
def reference(model_path, tmp_path_factory) -> tuple[Path, Path, str]:
    """(config, finished top folder, its output): the uninterrupted run."""
    base = tmp_path_factory.mktemp("iterate")
    config = base / "tiny.yaml"
    config.write_text(TINY.format(model=model_path))
    out = base / "run"
    return config, out, finish(config, out, base / "reference.log")


def test_sl_then_rl_round_end_to_end(reference):
    config, out, printed = reference
    record = json.loads((out / "iterate.json").read_text())
    rounds = record["rounds"]
    assert [(r["name"], r["kind"], r["status"]) for r in rounds] == [("00-sl", "sl", "done"), ("01-rl", "rl", "done")]
    for r in rounds:
        folder = out / "rounds" / r["name"]
        assert r["model"] == str(folder / "checkpoint") and (folder / "checkpoint" / "config.json").exists()
        summary = json.loads((folder / "audit" / "summary.json").read_text())
        assert r["audit"]["lc_win_rate"] == summary["overall"]["lc_win_rate"]
        assert set(r["audit"]["principles"]) == {"violence"}
        assert f"{r['name']}: LC win rate" in printed
    sl, rl = rounds
    assert rl["started_from"] == rl["baseline"] == sl["model"]  # RL from the SL model, audited against it
    assert (out / "rounds" / "00-sl" / "datasets" / "sft").is_dir()
    prefs = pd.read_parquet(out / "rounds" / "01-rl" / "datasets" / "preferences")
    assert len(prefs) > 0 and set(prefs["origin"]) == {"sampled"}
    # the gate decided, by its own rule, on the numbers it recorded
    g = rl["gate"]
    assert sl["gate"] is None and isinstance(g["passed"], bool) and g["reason"]
    if g["length_growth"] is not None:
        assert g["passed"] == (g["lc_ci_low"] > 0.5 and g["length_growth"] <= g["max_length_growth"])
    best = "01-rl" if g["passed"] else "00-sl"
    assert record["best"] == {"round": best, "model": str(out / "rounds" / best / "checkpoint")}
    assert record["status"] == ("done" if g["passed"] else "stopped")
    assert f"best model: {record['best']['model']}" in printed
    html = (out / "report.html").read_text()
    assert '"00-sl"' in html and '"01-rl"' in html


def train_state_begun(out: Path) -> bool:
    states = out / "rounds" / "01-rl" / "train" / "state"
    return states.is_dir() and any(p.name.startswith("step-") for p in states.iterdir())


def sl_round_only(done: Path, out: Path) -> None:
    """Make `out` the folder a command killed right after round 00-sl leaves (at the same path: the rounds
    record their paths)."""
    out.mkdir()
    shutil.copy2(done / "manifest.json", out / "manifest.json")
    shutil.copytree(done / "rounds" / "00-sl", out / "rounds" / "00-sl")


def test_kill_while_training_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    config, out, _ = reference
    done = out.with_name("run-uninterrupted")
    if not done.exists():
        out.rename(done)
    # The uninterrupted round 01-rl is run in a fresh process, as the killed one is: what a process computed
    # before can change the last bits of CPU floating point (CI sampled one of three rows differently after the
    # SL round had run in the same process), and that is not what this test is about.
    sl_round_only(done, out)
    finish(config, out, tmp_path / "whole.log")
    whole = out.rename(out.with_name("run-whole"))
    shutil.rmtree(done)  # two rounds of 0.5 GB checkpoints: the disk is CI's
    sl_round_only(whole, out)
    log = tmp_path / "killed.log"
    proc = start(config, out, log)
    deadline = time.monotonic() + LIMIT_S
    try:
        while not train_state_begun(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        had_checkpoint = (out / "rounds" / "01-rl" / "checkpoint" / "config.json").exists()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    assert json.loads((out / "iterate.json").read_text())["rounds"][-1]["status"] == "running"
    finish(config, out, tmp_path / "resumed.log")

    sl_again = json.loads((out / "rounds" / "00-sl" / "manifest.json").read_text())["last_run"]
    assert set(sl_again.values()) == {"already done"}  # the finished round was not redone
    if not had_checkpoint:  # killed mid-training (the usual case): training resumed from its state
        summary = json.loads((out / "rounds" / "01-rl" / "train" / "summary.json").read_text())
        assert summary["resumed_from"] is not None
    rows = [pd.read_parquet(f / "rounds" / "01-rl" / "datasets" / "preferences") for f in (whole, out)]
    pd.testing.assert_frame_equal(rows[0], rows[1])
    weights = [load_file(f / "rounds" / "01-rl" / "checkpoint" / "model.safetensors") for f in (whole, out)]
    assert weights[0].keys() == weights[1].keys()
    # the trainer's own bound (tests/train/test_crash.py gets bit for bit on this machine's kind)
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) <= 1e-6
    for f in (whole, out):  # finished: no resumable states left behind
        assert not (f / "rounds" / "01-rl" / "train" / "state").exists()
    record = [json.loads((f / "iterate.json").read_text()) for f in (whole, out)]
    assert [(r["name"], r["status"]) for r in record[0]["rounds"]] == [(r["name"], r["status"]) for r in
                                                                          record[1]["rounds"]]
