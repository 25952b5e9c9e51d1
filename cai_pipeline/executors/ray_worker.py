"""What runs inside a Ray actor: one engine, the run's assets, and `base.run_shard` for each shard.

Ray Data builds `ShardWorker(**kwargs)` once per actor (again when Ray restarts a dead actor) and then calls it
with batches of one shard index. Before loading anything it checks that it sees the driver's run folder (the
probe file the driver wrote), then loads the config, prompts, constitution and templates itself and checks
they hash to what the driver loaded. It writes its shards into the run folder (atomically: run_shard) and
answers each call with one row — the shard, its stats, and an error where there is one:

- `fatal`: a mistake the user must fix (a folder the workers cannot see, a max_tokens the context cannot
  hold): the driver stops with that line, as a local run would;
- otherwise a failure of this shard only (an exception in the engine): the driver lets the other shards
  finish and then names the shards that failed.

An actor may be asked to take each shard on through later stages that use the same model (`later`: revise after
sample, and pairs and judge where the judge is the policy), so a run loads its model once per actor instead of
once per stage. Nothing here knows which stages those are or how shards are scheduled; that is run_shard's and
the driver's.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from pathlib import Path

from cai_pipeline.errors import UserError

COLUMNS = ("shard", "stats", "engine", "error", "fatal")


def stages_find(name: str):
    from cai_pipeline import stages

    return stages.find(name)


def answer(shard: int, *, stats: dict | None = None, engine: dict | None = None, error: str = "",
           fatal: bool = False) -> dict[str, list]:
    """One result row, as the batch of columns Ray Data expects (the same columns on every path)."""
    return {"shard": [shard], "stats": [json.dumps(stats or {})], "engine": [json.dumps(engine or {})],
            "error": [error], "fatal": [fatal]}


def probe_problem(path: Path, token: str) -> str | None:
    """None when `path` holds `token` (this process sees the driver's run folder); else what it found."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return "is not there"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return None if text == token else "holds another driver's token (another folder at the same path)"


def cannot_see(root: Path, problem: str) -> str:
    return (f"out_dir: a Ray worker on {socket.gethostname()} cannot see the run folder {root} (its probe file "
            f"{problem}); every worker must see out_dir at the same path, on a shared filesystem — see "
            "docs/scale-out.md")


def use_threads(threads: int) -> None:
    """On CPU the thread count decides how torch splits its reductions, and so the floats (and the sampled
    tokens): fix it to the CPUs this actor reserved. vLLM on CPU would bind its OpenMP threads to every core
    of the machine, on top of the other actors': leave placement to the OS instead."""
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def restore_priority(target: int) -> int:
    """Run this actor's engine at the driver's niceness `target`: Ray starts workers at +15 (its
    worker_niceness), below its daemons and the driver, and on a busy CPU node an OpenMP team at +15 stalls at
    every barrier a descheduled thread holds. Linux keeps niceness per thread: set here, in the thread that runs
    the shards, it passes to the OpenMP threads the engine starts later. Lowering niceness needs the right to
    (root, CAP_SYS_NICE); without it the actor keeps Ray's. Returns the niceness it runs at."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current > target:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, target)
        except OSError:
            pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def engine_counts(engine) -> dict:
    if engine is None:
        return {"retries": 0, "errors": {}}
    return {"retries": engine.stats.retries, "errors": dict(engine.stats.errors)}


def counts_since(before: dict, after: dict) -> dict:
    errors = {k: v - before["errors"].get(k, 0) for k, v in after["errors"].items()}
    return {"retries": after["retries"] - before["retries"], "errors": {k: v for k, v in errors.items() if v}}


def same_package(config: dict, version: str | None):
    """The driver's config as this worker's cai-pipeline reads it; one line if the two installs differ."""
    from pydantic import ValidationError

    from cai_pipeline import __version__
    from cai_pipeline.config import RunConfig

    host = socket.gethostname()
    if version is not None and version != __version__:
        raise UserError(f"a Ray worker on {host} runs cai-pipeline {__version__}, the driver {version}; install "
                        "the same version on every node")
    try:
        return RunConfig.model_validate(config)
    except ValidationError as e:
        raise UserError(f"a Ray worker on {host} cannot read the driver's config ({e.errors()[0]['msg']}); install "
                        "the same cai-pipeline on every node") from None


class ShardWorker:
    """The callable class of `map_batches`: built once per actor, called once per shard."""

    def __init__(self, config: dict, stage: str, probe: str, hashes: dict, threads: int, quiet: bool = True,
                 progress=None, version: str | None = None, later: tuple[str, ...] = (), niceness: int | None = None):
        self.error, self.engines, self.engine, self.progress, self.later = "", None, None, progress, []
        self.threads, self.niceness, self.started = threads, niceness, False
        try:
            self._setup(same_package(config, version), stage, probe, hashes, quiet)
            self.later = [stages_find(name) for name in later]
        except UserError as e:  # answered on every call: the driver stops with it
            self.error = str(e)

    def _setup(self, cfg, stage: str, probe: str, hashes: dict, quiet: bool) -> None:
        from cai_pipeline import stages
        from cai_pipeline.assets import load_assets
        from cai_pipeline.console import quiet_libraries
        from cai_pipeline.executors.local import Engines
        from cai_pipeline.store import RunStore

        self.store = RunStore(cfg.out_dir)
        problem = probe_problem(self.store.layout.workers_probe, probe)
        if problem:
            raise UserError(cannot_see(self.store.root, problem))
        quiet_libraries(verbose=not quiet)
        self.assets = load_assets(cfg)
        differ = sorted(k for k in hashes if self.assets.hashes.get(k) != hashes[k])
        if differ:
            raise UserError(f"a Ray worker on {socket.gethostname()} reads other {' and '.join(differ)} than the "
                            "driver; every worker must see the same files at the same paths (docs/scale-out.md)")
        self.stage = stages.find(stage)
        self.engines = Engines(cfg)
        self.loads = 0

    def _start(self) -> None:
        """Build the engine on the first call, on the thread that runs every call. Ray Data builds this class on
        the actor's main thread but calls it on a thread of its own, and with GNU OpenMP each thread that runs
        torch ops leads its own team of workers: an engine loaded on one thread and run on another left its
        OpenMP worker asleep in futex waits 40% of the time, and one 2-CPU actor ran at 0.66 of the same engine
        used on one thread (libgomp barely spins once it manages more threads than there are CPUs; BENCHMARKS.md,
        "One engine, one thread"). Thread count and niceness are per thread too, so they are set here."""
        self.started = True
        if self.niceness is not None:
            restore_priority(self.niceness)
        use_threads(self.threads)
        self.engine = self.engines.get(self.stage.model_role)
        self.loads = 1 if self.engine is not None else 0

    def __call__(self, batch: dict) -> dict[str, list]:
        from cai_pipeline.executors.base import run_shard

        shard = int(batch["shard"][0])
        if self.error:
            return answer(shard, error=self.error, fatal=True)
        try:
            if not self.started:
                self._start()
        except UserError as e:
            self.error = str(e)
            return answer(shard, error=self.error, fatal=True)
        except Exception as e:  # the engine failed to start: this shard fails; the next call tries again
            self.started = False
            traceback.print_exc()
            return answer(shard, error=f"{type(e).__name__}: {e}")
        before = engine_counts(self.engine)
        try:
            stats = run_shard(self.stage, self.store, shard, self.assets, self.engine, on_rows=self._reporter(shard))
        except UserError as e:
            return answer(shard, error=str(e), fatal=True)
        except Exception as e:  # this shard failed; the actor (and its engine) serve the next one
            traceback.print_exc()  # into the worker's log, which Ray forwards to the driver
            return answer(shard, error=f"{type(e).__name__}: {e}")
        if stats is None:  # written before: a retry after the actor died between writing and answering
            stats = self.store.read_stats(self.stage.name, shard)
        error, fatal = self._run_later(shard)
        counts = counts_since(before, engine_counts(self.engine))
        counts["loads"], self.loads = self.loads, 0  # the engine this actor built, told once
        return answer(shard, stats=stats, engine=counts, error=error, fatal=fatal)

    def _run_later(self, shard: int) -> tuple[str, bool]:
        """The same shard through the stages after this one that use the same model (the driver's grouping:
        ray.stage_group), on this actor's engine: one model load per actor for all of them. Each writes its
        shard and stats as it would in a pool of its own; the driver reads them when it reaches the stage."""
        from cai_pipeline.executors.base import run_shard

        for stage in self.later:
            try:
                run_shard(stage, self.store, shard, self.assets, self.engine if stage.model_role else None)
            except UserError as e:
                return f"{stage.name}: {e}", True
            except Exception as e:
                traceback.print_exc()
                return f"{stage.name}: {type(e).__name__}: {e}", False
        return "", False

    def _reporter(self, shard: int):
        """on_rows for run_shard: the shard's running row count, sent to the driver's progress queue."""
        if self.progress is None:
            return None
        done = 0

        def on_rows(n: int) -> None:
            nonlocal done
            done += n
            try:
                self.progress.put_nowait((shard, done))
            except Exception:  # progress lines are a courtesy: a lost report must never fail the shard
                pass

        return on_rows

    def __del__(self):
        # Ray Data drops the worker when the pool shuts down gracefully: close the engine explicitly (vLLM on a
        # GPU has an engine process of its own to stop). Not while the interpreter exits, when imports fail and
        # the process takes its engine with it.
        if getattr(self, "engines", None) is not None and not sys.is_finalizing():
            self.engines.close()
