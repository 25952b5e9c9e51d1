"""Ctrl-C in every stage: `cai iterate` (which runs sample, revise, train and audit in its SL round, and sample,
pairs, judge, export, train and audit in its RL round) interrupted with SIGINT inside sample, revise, train,
audit and judge in turn, each time ending promptly with exit 130 and `interrupted; run the same command again
to resume`; the same command then finishes, and every Parquet file and the checkpoints equal those of an
uninterrupted run. Then revise on the continuous-batching path (revise.mode=chains), interrupted inside its
chains, resumes to the same shards.

Why a child process and a real signal: what is under test is what a user's Ctrl-C does — a SIGINT sent to the
process group at whatever point a stage is in (here, inside an engine call or a training step), the CLI's own
one line and exit code, a process that exits rather than finishing its work first, and a new process that
resumes from what the old one left. A KeyboardInterrupt raised in the test process proves none of that (and one
that escaped would end the whole pytest session). The engine is a stand-in that holds still inside the chosen
stage (tests/interrupt_runner.py; engine.kind cannot name it), so the signal lands while the stage works, in
every run, at no model's cost; training uses the tiny random llama. The real engines' side of an interrupt
(vLLM withdrawing the requests of cancelled chains) is tested in tests/engines/test_chains_interrupt.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import REPO
from tests.train.conftest import tiny_model  # noqa: F401 - the fixture, for the training rounds

LINE = "interrupted; run the same command again to resume"
PROMPT_S = 15  # seconds from SIGINT to exit: the hold would last 120 s, a whole stage far longer
GENERATE = ["sample.n=2", "sample.max_tokens=8", "revise.rounds=1", "revise.few_shot=0", "revise.max_tokens=8",
            "judge.principles=1", "engine.kind=hf"]
TINY = [*GENERATE, "train.max_steps=2", "train.save_every=1", "train.batch_size=1",
        "train.precision=fp32", "train.plots=false", "train.max_length=64", "train.max_prompt_length=32",
        "audit.limit=2", "audit.n=1", "audit.refusal=false", "audit.bootstrap=100", "audit.max_tokens=8"]


def iterate_args(out: Path, model: str) -> list[str]:
    return ["iterate", str(REPO / "configs" / "cai-paper.yaml"), f"out_dir={out}", f"model={model}",
            "prompts.limit=4", "iterate.rounds=1", "iterate.audit_base=false", "revise.mode=rounds", *TINY,
            "audit.principles=[violence]", "--no-report"]


def start(args: list[str], out: Path, hold: str = "") -> subprocess.Popen:
    # A training's reference cache goes to a CAI_HOME of its own; a run of the embedded model keeps the shared
    # one (where it is converted already).
    home = {"CAI_HOME": str(out.parent / "cai-home")} if "iterate" in args else {}
    env = {**os.environ, "CAI_TEST_HOLD": hold, "CAI_TEST_MARKER": str(out.parent / "held"), "OMP_NUM_THREADS": "2",
           **home}
    log = open(out.parent / "log", "ab")  # noqa: SIM115 - the child writes it; closed with it
    return subprocess.Popen([sys.executable, "-m", "tests.interrupt_runner", *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def log_tail(out: Path) -> str:
    return (out.parent / "log").read_text(errors="replace")[-3000:]


def interrupt_in(stage: str, args: list[str], out: Path) -> None:
    """Run until `stage` is working, press Ctrl-C (SIGINT to the process group, as a terminal does), and check
    the process ends promptly with 130 and the one line."""
    marker = out.parent / "held"
    marker.unlink(missing_ok=True)
    proc, deadline = start(args, out, hold=stage), time.monotonic() + 600
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{stage} was never reached (exit {proc.returncode}):\n{log_tail(out)}")
        time.sleep(0.05)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"SIGINT in {stage}: still running after 60 s:\n{log_tail(out)}") from None
    seconds = time.monotonic() - sent
    tail = log_tail(out)
    assert code == 130, f"SIGINT in {stage}: exit {code}:\n{tail}"
    assert tail.rstrip().splitlines()[-1] == LINE and "Traceback" not in tail, tail
    assert seconds < PROMPT_S, f"SIGINT in {stage}: {seconds:.1f} s to exit"
    (out.parent / "log").unlink()


def parquet_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))
            if not p.name.startswith(".")}


def same_rows(a: Path, a_root: Path, b: Path, b_root: Path) -> bool:
    """The two files hold the same rows, up to the run folder's own path."""
    def rows(path: Path, root: Path) -> str:
        return json.dumps(pq.read_table(path).to_pylist(), default=str).replace(str(root), "RUN")

    return rows(a, a_root) == rows(b, b_root)


def weights(root: Path) -> dict[str, dict]:
    from safetensors.torch import load_file

    return {str(p.relative_to(root)): load_file(p) for p in sorted(root.rglob("checkpoint/model.safetensors"))}


def reference(args: list[str], out: Path, monkeypatch) -> None:
    """The same command uninterrupted, in this process, on the same stand-in engine (put in place the way the
    child does it; monkeypatch puts everything back)."""
    import importlib

    from cai_pipeline.cli import main
    from tests import interrupt_runner

    if "iterate" in args:
        monkeypatch.setenv("CAI_HOME", str(out.parent / "cai-home"))
    monkeypatch.setattr(interrupt_runner, "HOLD", "")
    for module, name in (("cai_pipeline.engines", "make_engine"), ("cai_pipeline.executors.local", "run_shard"),
                         ("cai_pipeline.pipeline", "run_whole")):
        monkeypatch.setattr(importlib.import_module(module), name, getattr(importlib.import_module(module), name))
    interrupt_runner.install()
    assert main(args) == 0


def test_ctrl_c_in_every_stage_of_iterate_resumes_to_the_same_files(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "interrupted" / "it"
    out.parent.mkdir()
    args = iterate_args(out, tiny_model)
    for stage in ("sample", "revise", "train", "audit", "judge"):  # in the order the rounds reach them
        interrupt_in(stage, args, out)
    finished = start(args, out)
    assert finished.wait(timeout=600) == 0, log_tail(out)

    ref = tmp_path / "reference" / "it"
    ref.parent.mkdir()
    reference(iterate_args(ref, tiny_model), ref, monkeypatch)
    want, got = parquet_files(ref), parquet_files(out)
    assert sorted(got) == sorted(want) and any(name.startswith("rounds/01-rl/judge/") for name in got)
    differ = [name for name in want if got[name] != want[name]]
    # The audits record the models they ran by path, and the two runs' checkpoints lie in their own folders.
    assert differ == ["rounds/00-sl/audit/responses.parquet", "rounds/01-rl/audit/responses.parquet"]
    for name in differ:
        assert same_rows(ref / name, ref, out / name, out), f"{name} differs after the interrupts"
    import torch

    a, b = weights(ref), weights(out)
    assert sorted(a) == sorted(b) == ["rounds/00-sl/checkpoint/model.safetensors",
                                      "rounds/01-rl/checkpoint/model.safetensors"]
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), f"{name} differs after the interrupts"


def test_ctrl_c_in_revise_chains_resumes_to_the_same_shards(tmp_path, monkeypatch):
    out = tmp_path / "interrupted" / "run"
    out.parent.mkdir()
    args = ["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={out}", "prompts.limit=1", *GENERATE,
            "revise.mode=chains", "stages=[sample,revise]", "--no-report"]
    interrupt_in("revise", args, out)
    assert not (out / "revise").exists() or not list((out / "revise").glob("part-*"))
    assert start(args, out).wait(timeout=300) == 0, log_tail(out)
    ref = tmp_path / "reference" / "run"
    ref.parent.mkdir()
    reference([a.replace(str(out), str(ref)) for a in args], ref, monkeypatch)
    assert parquet_files(out) == parquet_files(ref) and pq.read_table(out / "revise" / "part-00000.parquet").num_rows == 2
