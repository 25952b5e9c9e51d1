"""The crash test: `cai run` on the real embedded model, killed with SIGKILL at several points — while sampling,
while revising, between a shard's rejects and its data part, with a shard's temporary file written but not yet
renamed, in the middle of the export — resumed each time, ends with exactly the files of an uninterrupted run
with the same seed. Then: a finished run resumes without starting an engine, in seconds; a changed config is
refused with the keys that changed, and --restart starts over.

Timed kills watch for shard files to appear (real crashes land wherever they land); the kills inside a write
come from a wrapper that patches `store.atomic_write` in the child process, so store.py carries no test hooks.
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
import pytest

from cai_pipeline.cli import main
from cai_pipeline.config import load_config
from cai_pipeline.pipeline import run_pipeline
from tests.conftest import REPO, later_wins
from tests.echo_engine import EchoEngine

pytestmark = pytest.mark.model

HAS_JUDGE = (REPO / "cai_pipeline" / "stages" / "judge.py").exists()
STAGES = ["sample", "revise", "pairs", *(["judge"] if HAS_JUDGE else []), "export"]
CONFIG = str(REPO / "configs" / "demo.yaml")
OVERRIDES = ["prompts.limit=4", "shard_size=2", "sample.max_tokens=8", "revise.max_tokens=8", "revise.rounds=1",
             "revise.few_shot=0", "judge.principles=1", "engine.kind=vllm",
             "engine.kv_cache_gb=1", f"stages=[{','.join(STAGES)}]"]

# Runs `cai run` in a child that may kill itself at a chosen write (CAI_TEST_KILL=when:relative/path, when
# being `before_rename` — the temporary file written and fsynced, not yet renamed — or `after`), and that
# exits 97 if an engine is built while CAI_TEST_NO_ENGINE is set.
RUNNER = r"""
import os, signal, sys
from pathlib import Path
import cai_pipeline.store as store
import cai_pipeline.engines as engines

when, _, target = os.environ.get("CAI_TEST_KILL", "").partition(":")
root = Path(os.environ["CAI_TEST_OUT"]).resolve()
original = store.atomic_write

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def atomic_write(path, write):
    hit = target and Path(path).resolve() == root / target
    if hit and when == "before_rename":
        return original(path, lambda tmp: (write(tmp), die()))
    original(path, write)
    if hit and when == "after":
        die()

store.atomic_write = atomic_write
if os.environ.get("CAI_TEST_NO_ENGINE"):
    def no_engine(*a, **k):
        print("an engine was started", file=sys.stderr)
        os._exit(97)
    engines.make_engine = no_engine

from cai_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def cai(out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115 - the child writes it; closed with it
    return subprocess.Popen([sys.executable, "-c", RUNNER, "run", CONFIG, *later_wins(f"out_dir={out}", *OVERRIDES, *extra)],
                            env={**os.environ, "CAI_TEST_OUT": str(out), **(env or {})}, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def log_tail(out: Path) -> str:
    return (out.parent / f"{out.name}.log").read_text(errors="replace")[-3000:]


def kill_when(out: Path, marker: str, timeout: float = 600) -> None:
    """Start a run and SIGKILL it as soon as `marker` (a file under out) appears."""
    proc, deadline = cai(out), time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / marker).exists():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the run ended ({proc.returncode}) before {marker} appeared:\n{log_tail(out)}")


def kill_at_write(out: Path, when: str, target: str, **env: str) -> None:
    proc = cai(out, env={"CAI_TEST_KILL": f"{when}:{target}", **env})
    assert proc.wait(timeout=600) == -signal.SIGKILL, f"no kill at {when}:{target}:\n{log_tail(out)}"


def finish(out: Path, **env: str) -> float:
    start = time.monotonic()
    proc = cai(out, env=env)
    assert proc.wait(timeout=600) == 0, log_tail(out)
    return time.monotonic() - start


def contents(out: Path) -> dict[str, list]:
    """Every Parquet file of the run folder (shards, rejects, datasets), by path. Temporary files of cut-short
    writes are hidden dot-files; nothing reads them, and neither do we."""
    return {str(p.relative_to(out)): pq.read_table(p).to_pylist() for p in sorted(out.rglob("*.parquet"))
            if not p.name.startswith(".")}


def stage_done(out: Path, stage: str, shard: int) -> bool:
    return (out / stage / f"part-{shard:05d}.parquet").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, vllm_engine):
    """An uninterrupted run with the same seed, on the session's engine (it replays a shard the same way in
    any process: every call is reseeded and starts from an empty prefix cache)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_pipeline(load_config(CONFIG, [f"out_dir={out}", *OVERRIDES]), engine=vllm_engine)
    return out


@pytest.fixture(scope="module")
def crashed(tmp_path_factory):
    """The same run, killed and resumed again and again; the folder after the last resume."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    kill_when(out, "sample/part-00000.parquet")  # while sampling shard 1
    assert not stage_done(out, "sample", 1)
    kill_when(out, "revise/part-00000.parquet")  # while revising shard 1
    assert not stage_done(out, "revise", 1)
    kill_at_write(out, "after", "rejects/pairs/part-00001.parquet")  # a shard half committed
    assert (out / "rejects/pairs/part-00001.parquet").exists() and not stage_done(out, "pairs", 1)
    # Pairs needs no model: this resume must not start an engine before it is killed in the write.
    kill_at_write(out, "before_rename", "pairs/part-00001.parquet", CAI_TEST_NO_ENGINE="1")
    assert list((out / "pairs").glob(".part-00001.parquet.*.tmp")) and not stage_done(out, "pairs", 1)
    kill_at_write(out, "after", "datasets/sft/train-00000-of-00001.parquet")  # half an export
    finish(out, CAI_TEST_NO_ENGINE="1")  # only the export is left: no engine
    return out


def test_killed_and_resumed_run_equals_an_uninterrupted_one(reference, crashed):
    want, got = contents(reference), contents(crashed)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs after the crashes"
    assert "datasets/preferences/train-00000-of-00001.parquet" in got


def test_no_row_is_duplicated_or_missing(reference, crashed):
    manifest = json.loads((crashed / "manifest.json").read_text())
    for stage in STAGES[:-1]:
        shards = [r for p in sorted((crashed / stage).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
        assert manifest["stages"][stage]["out"] == len(shards)
        assert manifest["stages"][stage]["shards_done"] == manifest["stages"][stage]["shards_total"] == 2
    sft = [r for p in (crashed / "datasets" / "sft").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    keys = [(r["prompt_id"], r["sample_idx"]) for r in sft]
    assert len(keys) == len(set(keys)) == manifest["stages"]["revise"]["out"]
    prefs = [r for p in (crashed / "datasets" / "preferences").glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    assert len({r["pair_id"] for r in prefs}) == len(prefs) > 0
    assert manifest["stages"]["sample"]["in"] == 4


def test_a_finished_run_resumes_in_seconds_without_an_engine(crashed):
    before = contents(crashed)
    seconds = finish(crashed, CAI_TEST_NO_ENGINE="1")  # exits 97 if it builds an engine
    assert contents(crashed) == before
    assert seconds < 60, f"resuming a finished run took {seconds:.0f} s"  # imports dominate; no model loads


def test_a_changed_config_is_refused_and_restart_starts_over(crashed, capsys):
    changed, before = ["sample.temperature=0.5", "revise.rounds=2"], contents(crashed)
    assert main(["run", CONFIG, *later_wins(f"out_dir={crashed}", *OVERRIDES, *changed)]) == 2
    # Warnings (e.g. the judge grades its own policy) may precede it; the refusal is one line.
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if not line.startswith("warning:")]
    assert len(errors) == 1 and "Traceback" not in "".join(lines)
    assert "sample.temperature" in errors[0] and "--restart" in errors[0]
    assert contents(crashed) == before  # nothing was touched

    cfg = load_config(CONFIG, later_wins(f"out_dir={crashed}", *OVERRIDES, *changed, "stages=[sample,revise]"))
    run_pipeline(cfg, restart=True, engine=EchoEngine())
    samples = pq.read_table(crashed / "sample" / "part-00000.parquet").to_pylist()
    assert samples[0]["response"].startswith("echo") and not (crashed / "datasets").exists()
    manifest = json.loads((crashed / "manifest.json").read_text())
    assert manifest["config"]["sample"]["temperature"] == 0.5 and set(manifest["stages"]) == {"sample", "revise"}

