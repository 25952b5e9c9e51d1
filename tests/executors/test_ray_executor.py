"""The Ray executor's pieces that need no cluster: its config section, how it sizes a pool, what it sends
workers, the probe a worker reads, the resource check, and the lines it prints. The real cluster runs in
test_ray.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from cai_pipeline.config import load_config
from cai_pipeline.errors import UserError
from cai_pipeline.executors import make_executor
from cai_pipeline.executors.local import LocalExecutor
from cai_pipeline.executors.ray import (
    RayExecutor,
    check_resources,
    failed_message,
    import_ray,
    pool_size,
    stalled_message,
    worker_config,
)
from cai_pipeline.executors.ray_worker import ShardWorker, answer, cannot_see, counts_since, probe_problem
from tests.conftest import REPO, later_wins, missing

CONFIG = REPO / "configs" / "demo.yaml"


def cfg(*overrides: str):
    return load_config(CONFIG, later_wins("out_dir=outputs/x", *overrides))


def test_the_executor_section_defaults_to_local_and_validates_the_pool():
    assert cfg().executor.kind == "local" and isinstance(make_executor(cfg()), LocalExecutor)
    assert cfg("executor.actors=[1,4]").executor.actors == [1, 4]
    for bad in ("executor.actors=0", "executor.actors=[4,1]", "executor.actors=[1,2,3]", "executor.actors=[2]"):
        with pytest.raises(UserError, match=r"executor\.actors: .*\[min, max\]"):
            cfg(bad)
    with pytest.raises(UserError, match="unknown key 'executor.actorz'; did you mean 'executor.actors'"):
        cfg("executor.actorz=2")


def test_a_vllm_actor_must_reserve_its_tensor_parallel_gpus():
    with pytest.raises(UserError, match=r"executor\.gpus_per_actor=1 is fewer than engine\.tensor_parallel_size=2.*"
                                        r"set executor\.gpus_per_actor=2"):
        cfg("executor.kind=ray", "executor.gpus_per_actor=1", "engine.tensor_parallel_size=2")
    assert cfg("executor.kind=ray", "executor.gpus_per_actor=2", "engine.tensor_parallel_size=2")


def test_a_ready_engine_is_refused_by_the_ray_executor():
    with pytest.raises(ValueError, match="cannot be shipped to Ray actors"):
        make_executor(cfg("executor.kind=ray"), shared_engine=object())


def test_the_pool_never_outnumbers_the_shards():
    assert pool_size(4, 10) == {"size": 4}
    assert pool_size(4, 2) == {"size": 2}
    assert pool_size([2, 8], 5) == {"min_size": 2, "max_size": 5}
    assert pool_size([2, 8], 1) == {"min_size": 1, "max_size": 1}


def test_workers_get_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "config.json").write_text("{}")
    sent = worker_config(cfg("prompts.path=p.jsonl", "judge.model=judge", "out_dir=runs/a"))
    assert sent["out_dir"] == str(tmp_path / "runs" / "a")
    assert sent["prompts"]["path"] == str(tmp_path / "p.jsonl")
    assert sent["judge"]["model"] == str(tmp_path / "judge")
    assert sent["model"] == "embedded"  # a name each node resolves in its own cache
    assert Path(sent["constitution"]).is_absolute() and Path(sent["constitution"]).exists()
    assert load_config(None, [f"out_dir={sent['out_dir']}"]).out_dir == sent["out_dir"]


def test_the_probe_says_what_a_worker_found(tmp_path):
    probe = tmp_path / ".workers-probe"
    assert probe_problem(probe, "t0k3n") == "is not there"
    probe.write_text("t0k3n\n")
    assert probe_problem(probe, "t0k3n") is None
    probe.write_text("other\n")
    assert "another driver" in probe_problem(probe, "t0k3n")
    line = cannot_see(tmp_path, "is not there")
    assert line.startswith("out_dir: a Ray worker on ") and str(tmp_path) in line and "shared filesystem" in line


def test_a_worker_that_cannot_see_the_folder_answers_every_shard_with_one_line(tmp_path):
    """The actor class itself, in this process: no engine is built, the error comes back as data."""
    config = cfg(f"out_dir={tmp_path}").model_dump()
    worker = ShardWorker(config, "sample", probe="t0k3n", hashes={}, threads=1)
    assert worker.engines is None and "cannot see the run folder" in worker.error
    row = worker({"shard": [3]})
    assert row["shard"] == [3] and row["fatal"] == [True] and row["error"] == [worker.error]
    assert set(row) == set(answer(0))


def test_a_worker_builds_its_engine_on_the_thread_that_runs_its_shards(tmp_path, monkeypatch):
    """Ray Data builds the actor's class on its main thread and calls it on another; an engine loaded on one
    thread and run on another ran at 0.66 of its speed (two OpenMP teams: BENCHMARKS.md, "Ray"). So nothing
    is loaded until the first call, and then on the calling thread, as here."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import cai_pipeline.engines
    import cai_pipeline.executors.ray_worker as ray_worker
    from cai_pipeline.store import RunLayout
    from tests.echo_engine import EchoEngine

    built_on, threads_set_on = [], []

    def make_engine(*args, **kwargs):
        built_on.append(threading.get_ident())
        return EchoEngine()

    monkeypatch.setattr(cai_pipeline.engines, "make_engine", make_engine)
    # recorded, not done: torch's thread count is process-wide here and would change every later test's floats
    monkeypatch.setattr(ray_worker, "use_threads", lambda n: threads_set_on.append((n, threading.get_ident())))
    config = cfg(f"out_dir={tmp_path}", "prompts.limit=2", "shard_size=2").model_dump()
    probe = RunLayout(tmp_path).workers_probe
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("t0k3n\n")
    worker = ShardWorker(config, "sample", probe="t0k3n", hashes={}, threads=1)
    assert worker.error == "" and built_on == []  # nothing loaded on the building thread
    with ThreadPoolExecutor(max_workers=1) as pool:  # Ray Data's single-threaded wrapper does the same
        calling = pool.submit(threading.get_ident).result()
        rows = [pool.submit(worker, {"shard": [0]}).result(), pool.submit(worker, {"shard": [0]}).result()]
    assert built_on == [calling]  # built once, on the thread that runs the shards
    assert threads_set_on == [(1, calling)]
    assert rows[0]["error"] == [""] and rows[0]["shard"] == [0]
    assert json.loads(rows[0]["engine"][0])["loads"] == 1 and json.loads(rows[1]["engine"][0])["loads"] == 0


def test_a_worker_with_another_install_says_so_in_one_line(tmp_path):
    config = cfg(f"out_dir={tmp_path}").model_dump()
    worker = ShardWorker(config, "sample", probe="t0k3n", hashes={}, threads=1, version="0.0.1")
    assert "runs cai-pipeline" in worker.error and "the driver 0.0.1" in worker.error
    worker = ShardWorker({**config, "executor": {"kind": "ray", "from_the_future": 1}}, "sample", probe="t0k3n",
                         hashes={}, threads=1)
    assert "cannot read the driver's config" in worker.error and "same cai-pipeline on every node" in worker.error


def test_engine_counts_are_per_shard():
    before = {"retries": 2, "errors": {"server_error": 1}}
    after = {"retries": 5, "errors": {"server_error": 1, "timeout": 2}}
    assert counts_since(before, after) == {"retries": 3, "errors": {"timeout": 2}}


def test_a_pool_this_machine_cannot_hold_is_refused_and_a_cluster_is_warned(capsys):
    ex = cfg("executor.kind=ray", "executor.cpus_per_actor=2").executor
    check_resources(ex, 2, {"CPU": 4.0}, local=True)  # fits
    with pytest.raises(UserError, match=r"2 actor\(s\) × 2 CPU, 0 GPU need 4 CPUs \(it has 2\).*lower executor"):
        check_resources(ex, 2, {"CPU": 2.0}, local=True)
    check_resources(ex, 2, {"CPU": 2.0}, local=False)
    assert "the actors wait until the cluster has them" in capsys.readouterr().err
    gpu = cfg("executor.kind=ray", "executor.gpus_per_actor=1").executor
    with pytest.raises(UserError, match=r"need 1 GPUs \(it has 0\)"):
        check_resources(gpu, 1, {"CPU": 8.0}, local=True)


def test_failed_shards_are_named_with_the_way_to_retry_them():
    line = failed_message("revise", {2: "ArrowInvalid: not a parquet file"}, [0], retries=0)
    assert line.startswith("revise: 2 shard(s) did not finish (shard 2: ArrowInvalid")
    assert "shard 0: its actor died 1 times" in line and "run the same command again" in line


def test_a_stalled_pool_ends_in_a_line_naming_the_shards_not_done():
    """Ray Data's no-progress timeout (a dead actor can hold a fixed pool: ray#62746) ends the rows, not the run:
    the executor sees the shards that came back, then None, and names the rest."""
    try:
        from ray.data.exceptions import ExecutionTimeoutError
    except ImportError:
        missing("Ray is not installed (pip install 'cai-pipeline[ray]')")

    class Stalls:
        def iter_rows(self):
            yield {"shard": 0}
            raise ExecutionTimeoutError("Dataset execution made no progress for at least 1800s")

    assert list(RayExecutor._rows(Stalls())) == [{"shard": 0}, None]
    line = stalled_message("revise", {2: "KeyError: 'prompt_id'"}, [1, 3], 1800)
    assert line.startswith("revise: no shard finished for 1800 s") and "2 shard(s) not done (1, 3)" in line
    assert "shard 2: KeyError" in line and "run the same command again" in line and "stall_timeout_s" in line
    assert cfg("executor.stall_timeout_s=-1").executor.stall_timeout_s == -1
    with pytest.raises(UserError, match=r"executor\.stall_timeout_s: .*-1 for no limit"):
        cfg("executor.stall_timeout_s=0")


def test_without_ray_the_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'cai-pipeline\[ray\]'"):
        import_ray()


def test_an_actor_goes_back_to_the_drivers_priority():
    """Ray starts workers at niceness +15; the worker lowers its own to the driver's where it may (root here)."""
    import subprocess

    code = ("import os; os.nice(7); from cai_pipeline.executors.ray_worker import restore_priority; "
            "print(restore_priority(2), restore_priority(9), os.nice(0))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    got = [int(x) for x in done.stdout.split()]
    if os.geteuid() != 0:
        pytest.skip("lowering niceness needs root or CAP_SYS_NICE")
    assert got == [2, 2, 2]  # lowered to the target; never raised above where it is
