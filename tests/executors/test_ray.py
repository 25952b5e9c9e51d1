"""Scale-out on a real Ray cluster that this module starts (2 CPUs on 127.0.0.1, shut down at the end), with
the real embedded model on the hf engine in 2 actors × 1 CPU:

- sample → revise → pairs → judge → export on 6 prompts, one of them too long for the context, with an actor
  SIGKILLed in the middle of a revise shard, gives file for file and row for row what a local run with the
  same seed and the same torch thread count (1) gives; the long prompt is a reject with its reason, beside
  its shard's good row;
- `cai run … executor.kind=ray` (its own local Ray, as `make demo` would start) SIGKILLed mid-sample, then
  run again, resumes from the shards it had finished;
- a shard whose input is broken is named in one line while the other shards are saved (one of them retried
  after its actor was killed); the next run does only that one;
- a worker that finds another folder at out_dir's path stops the run in one line, before any model loads;
- one vLLM actor gives the rows of a local vLLM run.

Actors are found the way an operator would: Ray titles an actor's process `ray::<class>.submit` while it runs
a task; only descendants of this test process (our own cluster) are ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai_pipeline.cli import main
from cai_pipeline.config import load_config
from cai_pipeline.errors import UserError
from cai_pipeline.executors.ray import RayExecutor
from cai_pipeline.pipeline import run_pipeline
from cai_pipeline.store import file_digest
from tests.conftest import REPO, later_wins

pytestmark = pytest.mark.model

CONFIG = str(REPO / "configs" / "demo.yaml")
WORKER_TITLE = "ray::MapWorker(MapBatches(ShardWorker))"
POISON = 3  # the over-long prompt's position: shard 1 holds it and one good prompt


def overrides(prompts: Path) -> list[str]:
    return [f"prompts.path={prompts}", "shard_size=2", "engine.kind=hf", "sample.max_tokens=8",
            "revise.max_tokens=8", "revise.rounds=1", "revise.few_shot=0", "judge.principles=1",
            "stages=[sample,revise,pairs,judge,export]", "executor.actors=2", "executor.cpus_per_actor=1"]


def config(out: Path, prompts: Path, *extra: str):
    return load_config(CONFIG, later_wins(f"out_dir={out}", *overrides(prompts), *extra))


@pytest.fixture
def released(cluster):
    """After the test, every CPU of the cluster is free again: a pool left alive would make the next stage (or
    test) wait for its CPUs forever, so that fails here, with a message, instead."""
    yield cluster
    import ray

    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2, "a stage left its actors holding the cluster's CPUs"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """Five bundled prompts and, at POISON, one far longer than the model's context (4096 tokens)."""
    lines = (REPO / "cai_pipeline" / "data" / "prompts.jsonl").read_text().splitlines()[:5]
    lines.insert(POISON, json.dumps({"prompt": "Tell me about the ocean. " * 1500}))
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prompts, model_path) -> Path:
    """The local run, as each 1-CPU actor runs its shards: in a fresh process with torch on one thread from the
    start. (Not this test process's engine: set to one thread after it has run on two, torch on CPU may keep
    kernels chosen for two, and their floats differ in the last bits — enough to change a sampled token.)"""
    out = tmp_path_factory.mktemp("local") / "run"
    args = [sys.executable, "-m", "cai_pipeline.cli", "run", CONFIG, f"out_dir={out}", *overrides(prompts), "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def contents(out: Path, under: str = "") -> dict[str, list]:
    """Every Parquet file of a run folder (or of its `under` subfolders), by path, as rows."""
    return {str(p.relative_to(out)): pq.read_table(p).to_pylist() for p in sorted(out.rglob("*.parquet"))
            if not p.name.startswith(".") and str(p.relative_to(out)).startswith(under)}


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the local run"


# -- finding and killing our own actors -----------------------------------------------------------------------


def descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def title(pid: int) -> str:
    """A live process's title ("" once it has exited, or is a zombie: nothing left of it but its exit code)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def busy_actors() -> list[int]:
    """Shard actors of our cluster that are running a shard right now."""
    return [pid for pid in sorted(descendants(os.getpid())) if title(pid).startswith(WORKER_TITLE)
            and title(pid).endswith(".submit")]


class KillWhen(threading.Thread):
    """SIGKILL one busy actor once `ready()` has held for `settle` seconds; `killed` is its pid."""

    def __init__(self, ready: Callable[[], bool], settle: float = 0.0):
        super().__init__(daemon=True)
        self.ready, self.settle = ready, settle
        self.done, self.killed = threading.Event(), None

    def run(self) -> None:
        since = None
        while not self.done.is_set():
            since = (since or time.monotonic()) if self.ready() else None
            busy = busy_actors() if since is not None and time.monotonic() - since >= self.settle else []
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                self.killed = busy[0]
                return
            time.sleep(0.02)

    def __enter__(self) -> KillWhen:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()


def shards(out: Path, stage: str) -> int:
    return len(list((out / stage).glob("part-*.parquet")))


# -- the tests ------------------------------------------------------------------------------------------------


def test_a_ray_run_with_a_killed_actor_equals_the_local_run(released, reference, prompts, tmp_path):
    out = tmp_path / "ray"
    with KillWhen(lambda: 1 <= shards(out, "revise") < 3) as kill:
        manifest = run_pipeline(config(out, prompts, "executor.kind=ray"))
    assert kill.killed, "no actor was running a revise shard when the first one landed"
    assert_same(contents(out), contents(reference))
    want = json.loads((reference / "manifest.json").read_text())["stages"]
    for stage in ("sample", "revise", "pairs", "judge"):
        got = manifest["stages"][stage]
        assert got["shards_done"] == got["shards_total"] == 3
        assert (got["in"], got["out"], got["rejected"]) == (want[stage]["in"], want[stage]["out"], want[stage]["rejected"])
    # The poison prompt: a reject with its reason; its shard's other prompt went on to be sampled.
    [reject] = pq.read_table(out / "rejects" / "sample" / "part-00001.parquet").to_pylist()
    assert reject["reason"] == "too_long" and "fills the context" in reject["detail"]
    assert len(pq.read_table(out / "sample" / "part-00001.parquet")) == 2
    assert not (out / ".workers-probe").exists()


def test_a_killed_driver_resumes_from_its_finished_shards(reference, prompts, tmp_path):
    """The CLI as a user runs it, with its own local Ray instance; the driver alone is killed. An actor that was
    in the middle of a shard may still write it whole before it notices its Ray is gone: the resume counts
    what is on disk once those actors have exited."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cai_pipeline.cli", "run", CONFIG,
            *later_wins(f"out_dir={out}", *overrides(prompts), "executor.kind=ray", "stages=[sample]")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "driver.log"
    with open(log, "wb") as sink:
        driver = subprocess.Popen(args, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 600
            while driver.poll() is None and shards(out, "sample") == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            its_actors = [pid for pid in descendants(driver.pid) if title(pid).startswith(WORKER_TITLE)]
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait()
            assert driver.returncode == -signal.SIGKILL, log.read_text()[-3000:]
            assert shards(out, "sample") < 3, "the driver finished before it was killed"
            wait_until_gone(its_actors)
            finished = shards(out, "sample")
            assert 1 <= finished < 3, f"{finished} shards were on disk once the dead driver's actors had exited"
            again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        finally:
            with contextlib.suppress(ProcessLookupError):  # what is left of the dead driver's Ray goes within a
                os.killpg(driver.pid, signal.SIGKILL)      # minute by itself; this test does not wait for it
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same(contents(out, "sample"), contents(reference, "sample"))
    assert_same(contents(out, "rejects/sample"), contents(reference, "rejects/sample"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["last_run"]["sample"] == f"resumed ({finished} of 3 shards were done)"
    assert manifest["stages"]["sample"]["shards_done"] == 3


def wait_until_gone(pids: list[int], timeout: float = 60) -> None:
    """Until none of `pids` runs (a dead driver's actors exit once they see their Ray is gone)."""
    deadline = time.monotonic() + timeout
    while any(title(pid) for pid in pids):
        assert time.monotonic() < deadline, f"the dead driver's actors still run after {timeout:.0f} s"
        time.sleep(0.2)


def test_shards_that_fail_for_good_are_named_and_the_next_run_does_only_them(released, reference, prompts, tmp_path):
    """A shard whose input is broken fails on every try; an actor killed mid-shard is restarted and its shard
    retried. The stage saves every shard it can, names the one that failed in one line, and the next run does
    only that one. (An actor that dies with no retries left can stall Ray 2.60's pool, ray-project/ray#62746:
    the executor turns that into a line too, tested in test_ray_executor.py, so this test leaves it a retry.)"""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for folder in ("revise", "stats/revise", "rejects/revise"):
        shutil.rmtree(out / folder)
    broken, stats = out / "sample" / "part-00002.parquet", out / "stats" / "sample" / "part-00002.json"
    good, good_stats = broken.read_bytes(), stats.read_text()
    pq.write_table(pa.table({"junk": [1, 2]}), broken)  # Parquet, but not a sample shard ...
    recorded = json.loads(good_stats)
    recorded["files"]["data"] = file_digest(broken)  # ... recorded as written: not damaged, just wrong for revise
    stats.write_text(json.dumps(recorded))
    cfg = config(out, prompts, "executor.kind=ray", "executor.shard_retries=1", "stages=[revise]")
    # Kill an actor that has been running a shard for a while before any shard finished: shard 0 or 1 (the
    # broken shard 2 fails in milliseconds), so that one is retried on the restarted actor.
    first = KillWhen(lambda: shards(out, "revise") == 0 and bool(busy_actors()), settle=0.3)
    with first as kill, pytest.raises(UserError) as err:
        run_pipeline(cfg)
    assert kill.killed
    line = str(err.value)
    assert line.startswith("revise: 1 shard(s) did not finish") and "run the same command again" in line
    assert "shard 2: KeyError: 'prompt_id'" in line
    assert sorted(contents(out, "revise")) == ["revise/part-00000.parquet", "revise/part-00001.parquet"]

    broken.write_bytes(good)
    stats.write_text(good_stats)
    manifest = run_pipeline(config(out, prompts, "executor.kind=ray", "stages=[revise]"))
    assert manifest["last_run"]["revise"] == "resumed (2 of 3 shards were done)"
    assert_same(contents(out, "revise"), contents(reference, "revise"))


def test_a_worker_that_sees_another_folder_stops_the_run_in_one_line(released, prompts, tmp_path, monkeypatch, capsys):
    """As on a cluster where each node has its own disk at out_dir's path: the probe a worker reads there is
    not the one this driver wrote."""
    real = RayExecutor._write_probe
    monkeypatch.setattr(RayExecutor, "_write_probe", lambda self, store: (real(self, store), "not-this-one")[1])
    out = tmp_path / "run"
    code = main(["run", CONFIG, *later_wins(f"out_dir={out}", *overrides(prompts), "executor.kind=ray", "stages=[sample]")])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "cannot see the run folder" in lines[0] and str(out) in lines[0] and "another driver" in lines[0]
    assert shards(out, "sample") == 0 and not (out / ".workers-probe").exists()


@pytest.mark.vllm
def test_a_vllm_actor_gives_the_rows_of_a_local_vllm_run(released, vllm_engine, prompts, tmp_path):
    """One actor with both CPUs: vLLM there runs on two threads, as the local engine does."""
    shared = ["engine.kind=vllm", "stages=[sample]"]
    run_pipeline(config(tmp_path / "local", prompts, *shared), engine=vllm_engine)
    run_pipeline(config(tmp_path / "ray", prompts, *shared, "executor.kind=ray", "executor.actors=1",
                        "executor.cpus_per_actor=2"))
    assert_same(contents(tmp_path / "ray"), contents(tmp_path / "local"))
