"""The trainer's crash test: `cai train` (fp32, DPO, 6 steps, a state every 2) killed with SIGKILL at random
points — during a step, and during the save of a state (a timer fires at a random moment inside its write,
patched in the child as tests/test_resume.py patches store.atomic_write) — resumed each time, ends with the
weights of an uninterrupted run (max |Δ| ≤ 1e-6; here bit for bit) and a metrics.jsonl holding each step
exactly once, with the same losses.

The model is the tiny random llama of tests/train/conftest.py (the embedded model's architecture, vocabulary
and tokenizer, 2 small layers): what is under test is the states, the RNGs and the resume, which do not
depend on the model's size, and the embedded model's 1.6 GB fp32 states made this test cost a quarter of
CI's time. A step of the tiny model takes milliseconds, so the child sleeps STEP_SLEEP seconds inside each
forward pass: a kill "during a step" lands between a step's forward and its optimizer update, as it would
on a real model. tests/train/test_real.py and test_stage.py train and resume the embedded model itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

from .conftest import chat_pair, write_split

pytestmark = pytest.mark.model

STEPS = 6
STEP_SLEEP = "0.5"  # seconds inside each forward pass of the child (see the module's docstring)
# `cai train` in a child that, given CAI_TEST_KILL_SAVE=<state folder name>, SIGKILLs itself at a random moment
# while writing that state (the write, then the rename, are what atomic_folder does).
RUNNER = r"""
import os, random, signal, sys, threading
from pathlib import Path
import cai_pipeline.store as store

target, original = os.environ.get("CAI_TEST_KILL_SAVE"), store.atomic_folder

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def atomic_folder(path, write):
    if Path(path).name != target:
        return original(path, write)
    def dying(tmp):
        threading.Timer(random.uniform(0.0, 0.3), die).start()
        write(tmp)
        die()  # at the latest: written, never renamed
    return original(path, dying)

store.atomic_folder = atomic_folder

import time
import cai_pipeline.train.loop as loop
pause, batch_loss = float(os.environ.get("CAI_TEST_STEP_SLEEP", "0")), loop.batch_loss

def slow_batch_loss(*args, **kwargs):
    out = batch_loss(*args, **kwargs)
    time.sleep(pause)  # after the forward pass, before its backward and the optimizer's update
    return out

loop.batch_loss = slow_batch_loss
from cai_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def config(tiny_model, tmp_path) -> Path:
    rows = [chat_pair(f"Name a colour, number {i}.", f"Blue, number {i}.", f"I won't, {i}.") for i in range(12)]
    write_split(tmp_path / "prefs", "train", rows)
    path = tmp_path / "run.yaml"
    path.write_text(f"model: {tiny_model}\ntrain:\n  data: {tmp_path / 'prefs'}\n  loss: dpo\n  max_steps: {STEPS}\n"
                    "  batch_size: 2\n  save_every: 2\n  keep_states: 2\n  max_length: 48\n  max_prompt_length: 32\n"
                    "  precision: fp32\n  lr: 1.0e-5\n  warmup_ratio: 0.0\n  plots: false\n")
    return path


def start(config: Path, out: Path, **env: str) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115 - the child writes it; closed with it
    return subprocess.Popen([sys.executable, "-c", RUNNER, "train", str(config), f"out_dir={out}"], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "2", "CAI_TEST_STEP_SLEEP": STEP_SLEEP, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def log_tail(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text(errors="replace")[-3000:]


def steps_logged(out: Path) -> list[int]:
    path = out / "train" / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being appended right now
            pass
    return [r["step"] for r in rows if "loss" in r]


def kill_after_step(config: Path, out: Path, step: int, delay: float, timeout: float = 1500) -> None:
    """Start, and SIGKILL `delay` seconds after step `step` is logged (a moment inside a later step or save)."""
    proc, deadline = start(config, out), time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and step not in steps_logged(out):
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        raise AssertionError(f"the run ended ({proc.returncode}) before the kill after step {step}:\n{log_tail(out)}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def finish(config: Path, out: Path, **env: str) -> int:
    proc = start(config, out, **env)
    return proc.wait(timeout=1500)


def weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "checkpoint" / "model.safetensors")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]


def test_killed_anywhere_it_resumes_to_the_uninterrupted_weights(config, tmp_path):
    seed = int(os.environ.get("CAI_TEST_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert finish(config, whole) == 0, log_tail(whole)

    kill_after_step(config, cut, 1, rng.uniform(0.0, 0.55))  # in step 2, or the save of state 2
    assert steps_logged(cut) == list(range(1, len(steps_logged(cut)) + 1))
    code = finish(config, cut, CAI_TEST_KILL_SAVE="step-00000004")  # resumes, dies while saving step 4
    assert code == -signal.SIGKILL, f"seed {seed}: no kill inside the save of step 4 ({code}):\n{log_tail(cut)}"
    assert [p.name for p in (cut / "train" / "state").glob("step-*")] == ["step-00000002"], f"seed {seed}"
    kill_after_step(config, cut, 5, rng.uniform(0.0, 0.55))  # in step 6, or the final save
    assert finish(config, cut) == 0, f"seed {seed}:\n{log_tail(cut)}"

    log = (tmp_path / "cut.log").read_text(errors="replace")
    assert log.count("resuming from") >= 2, f"seed {seed}:\n{log[-3000:]}"  # from state 2, then from state 4
    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"seed {seed}: max |Δ| {worst}"
    assert all(torch.equal(a[k], b[k]) for k in a), f"seed {seed}: within 1e-6 ({worst}) but not bit for bit"
    rows = {name: [r for r in metrics(out) if "loss" in r] for name, out in (("whole", whole), ("cut", cut))}
    assert [r["step"] for r in rows["cut"]] == list(range(1, STEPS + 1)), f"seed {seed}"  # each step once
    assert [r["loss"] for r in rows["cut"]] == [r["loss"] for r in rows["whole"]], f"seed {seed}"
    assert [r["step"] for r in metrics(cut) if "eval/loss" in r] == []  # no test split: no evals
    assert not (cut / "train" / "state").exists()  # finished: the states are deleted (keep_final_state false)
