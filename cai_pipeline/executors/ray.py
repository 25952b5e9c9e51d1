"""The Ray executor: a stage's shards on a pool of engine actors (Ray Data); the manifest stays on the driver.

The unfinished shards of a stage become a Ray dataset of shard indices, one per block. `map_batches` runs
`ShardWorker` (ray_worker.py) on an `ActorPoolStrategy` pool: each actor builds one engine and calls
`base.run_shard` for each shard it is handed, writing the shard into the run folder itself. One shard is
in flight per actor (a shard is minutes of work; a second queued behind it would only unbalance the pool).
What comes back is one small row per shard — its stats — which the driver hands to `on_done`, exactly as the
local executor does, so the manifest and the progress lines are the local ones. A stage without a model
(pairs) is file work: it runs here on the driver, through the local executor. Run-scope stages (export,
train) never reach an executor.

Faults. Ray restarts a dead actor (max_restarts=-1) and retries its shard up to `executor.shard_retries` times
(max_task_retries). A shard that fails for good is dropped by Ray Data (max_errored_blocks=-1) so that the
other shards finish — one lost engine never loses the job — and the stage then stops with a line naming the
shard; `cai run` again retries only what is missing. A shard cut short leaves no file (run_shard writes
atomically), so a retried shard is written exactly once.

Stalls. In Ray 2.60 an actor that dies for good can stay counted in a fixed-size pool, which then never
replaces it and hands its queued shards to nobody (ray-project/ray#62746; the fix, #65543, is not released).
Ray Data gives up on a dataset that makes no progress for `execution_no_progress_timeout_s`; we set that from
`executor.stall_timeout_s` and turn the timeout into the same line as any other failure — the shards not done
are named, the finished ones are kept — rather than a traceback.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import threading
import uuid
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from cai_pipeline import __version__
from cai_pipeline.errors import UserError
from cai_pipeline.executors.local import LocalExecutor

LOCAL_OBJECT_STORE = 256 * 1024**2  # only shard indices and stats travel through it
# Ray starts its workers — our engine actors — at niceness +15 (its `worker_niceness`), below its own daemons
# and our driver. An engine is the run's work, not a background task: on a busy node (the driver, Ray's
# daemons, anything else) a 2-thread OpenMP team at +15 loses far more than its share, as one descheduled
# thread stalls the other at every barrier. A Ray instance we start runs them at the driver's priority.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError("executor.kind=ray needs Ray: pip install 'cai-pipeline[ray]' (or `make install`), "
                        "or use executor.kind=local") from None
    return ray


def pool_size(actors: int | list[int], shards: int) -> dict:
    """ActorPoolStrategy's arguments: never more actors than shards (each would load a model for nothing)."""
    if isinstance(actors, int):
        return {"size": min(actors, shards)}
    return {"min_size": min(actors[0], shards), "max_size": min(actors[1], shards)}


def worker_config(cfg) -> dict:
    """The config as workers get it: every path absolute, since a worker need not start in our directory."""
    from cai_pipeline.bundled import resolve_resource

    data = cfg.model_dump()
    data["out_dir"] = str(Path(cfg.out_dir).resolve())
    data["constitution"] = str(resolve_resource(cfg.constitution).resolve())
    if cfg.prompts.path:
        data["prompts"]["path"] = str(Path(cfg.prompts.path).expanduser().resolve())
    for section, key in ((data, "model"), (data["judge"], "model")):
        if section[key] and Path(section[key]).expanduser().is_dir():
            section[key] = str(Path(section[key]).expanduser().resolve())
    return data


def stage_group(first, planned: list[str], cfg) -> list:
    """`first` and the planned shard stages after it that one actor can take each shard through on the same
    engine: those of the same model, with a model-free stage between them (pairs before a judge that is the
    policy) carried along. Sample and revise always go together; the judge joins when judge.model is the run's
    model. One pool and one model load per actor for the whole group, instead of one per stage."""
    from cai_pipeline import stages
    from cai_pipeline.executors.local import model_for

    model = model_for(cfg, first.model_role)
    order = [s for s in stages.sharded() if s.name in planned]
    names = [s.name for s in order]
    after = order[names.index(first.name) + 1:] if first.name in names else []
    group, carried = [first], []
    for stage in after:
        if stage.model_role is None:
            carried.append(stage)
        elif model_for(cfg, stage.model_role) == model:
            group, carried = group + carried + [stage], []
        else:
            break
    return group


def check_resources(ex, low: int, have: dict, local: bool) -> None:
    """A pool the cluster cannot hold would wait forever: say so before any actor starts. On a cluster with an
    autoscaler more nodes may come, so there it is a warning."""
    need = {"CPU": low * ex.cpus_per_actor, "GPU": low * ex.gpus_per_actor}
    short = [f"{need[k]:g} {k}s (it has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0) + 1e-9]
    if not short:
        return
    where = "this machine's Ray instance" if local else "the Ray cluster"
    message = (f"executor: {low} actor(s) × {ex.cpus_per_actor:g} CPU, {ex.gpus_per_actor:g} GPU need "
               f"{' and '.join(short)} on {where}")
    if local:
        raise UserError(f"{message}; lower executor.actors, executor.cpus_per_actor or executor.gpus_per_actor")
    print(f"warning: {message}; the actors wait until the cluster has them", file=sys.stderr)


def failed_message(stage: str, failures: dict[int, str], lost: list[int], retries: int) -> str:
    named = [f"shard {i}: {why}" for i, why in sorted(failures.items())]
    named += [f"shard {i}: its actor died {retries + 1} times (Ray's log above says why; often out of memory)"
              for i in lost]
    return (f"{stage}: {len(named)} shard(s) did not finish ({'; '.join(named)[:600]}); every other shard is "
            "saved — run the same command again to retry only these")


def stalled_message(stage: str, failures: dict[int, str], lost: list[int], timeout: float) -> str:
    named = [f"shard {i}: {why}" for i, why in sorted(failures.items())]
    return (f"{stage}: no shard finished for {timeout:g} s, so the stage stopped with {len(lost)} shard(s) not done "
            f"({', '.join(map(str, lost))[:300]}){'; ' + '; '.join(named)[:300] if named else ''}; every finished "
            "shard is saved — run the same command again to do only the rest (a shard slower than that: raise "
            "executor.stall_timeout_s)")


def quiet_ray() -> None:
    """Ray's notices that say nothing about this run: the (good) default of token authentication, and that
    Ray Data's progress bars are off (ours are on). Ray Data's INFO lines go too; its warnings stay."""
    for name in ("ray._private.authentication", "ray.data._internal.progress"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.WARNING)


@contextmanager
def data_context(**settings):
    """Ray Data reads its DataContext when a dataset is created; set ours for that moment only."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in settings}
    for k, v in settings.items():
        setattr(ctx, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


class RowReports:
    """Rows finished inside shards, as the actors report them (a Ray queue the driver drains every second), so
    the progress lines move within a shard as they do locally. An actor sends its running count for the shard;
    only counts above the best seen for that shard are added, so a retried shard is not counted twice."""

    def __init__(self, on_rows, lock: threading.Lock):
        from ray.util.queue import Queue

        self.queue = Queue(actor_options={"num_cpus": 0})
        self.on_rows, self.lock, self.best = on_rows, lock, Counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="cai-row-reports", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(1.0):
            self.drain()

    def drain(self) -> None:
        try:
            reports = self.queue.get_nowait_batch(self.queue.qsize())
        except Exception:  # the queue's actor is gone (Ray stopping): this is progress only, never the run
            return
        for shard, count in reports:
            if count > self.best[shard]:
                with self.lock:
                    self.on_rows(shard, count - self.best[shard])
                self.best[shard] = count

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.drain()
        self.queue.shutdown(force=True)


class RayExecutor:
    def __init__(self, cfg, shared_engine=None, stages: list[str] | None = None):
        if shared_engine is not None:
            raise ValueError("a ready engine cannot be shipped to Ray actors; run_pipeline(engine=...) is local only")
        self.cfg, self.ex = cfg, cfg.executor
        self.planned = list(cfg.stages if stages is None else stages)
        self.ran_ahead: dict[str, str] = {}  # stage → the stage whose pool computed its shards
        self.local = LocalExecutor(cfg)
        self.engines = self.local.engines  # for run-scope stages on the driver
        self.connected = False  # we called ray.init (and so disconnect, which stops our actors)
        self.local_instance = False  # ... and it started a Ray instance of its own on this machine
        self.stats: dict[str, dict] = {}
        self.probes: set[Path] = set()

    def run(self, stage, shards, assets, store, *, on_done, on_rows) -> None:
        if stage.model_role is None:
            self.local.run(stage, shards, assets, store, on_done=on_done, on_rows=on_rows)
            return
        self._connect()
        token = self._write_probe(store)
        later = stage_group(stage, self.planned, self.cfg)[1:]
        self.ran_ahead.update({s.name: stage.name for s in later})
        lock = threading.Lock()  # on_rows comes from the reports thread, on_done from this one
        reports = RowReports(on_rows, lock)
        done, failures, fatal, stalled = set(), {}, "", False
        try:
            for row in self._rows(self._dataset(stage, shards, assets, token, reports.queue, later)):
                if row is None:
                    stalled = True
                    break
                shard, stats = int(row["shard"]), json.loads(row["stats"])
                if stats and shard not in done:  # Ray may run a task twice (lineage); the shard counts once
                    done.add(shard)  # (a later stage of the group may still have failed on it: below)
                    self._add_engine_counts(stage.model_role, json.loads(row["engine"]))
                    with lock:
                        on_done(shard, stats)
                if row["fatal"]:
                    fatal = row["error"]
                    break  # leave the loop (and drop its iterator) before raising: see below
                if row["error"]:
                    failures[shard] = row["error"]
        finally:
            reports.close()
            # Ray Data's actor pool sits in a reference cycle: its actors (and the CPUs/GPUs they reserve) live
            # until the garbage collector breaks it, and the next stage's pool would wait for them forever.
            gc.collect()
        if fatal:
            raise UserError(fatal)
        lost = [s for s in shards if s not in done and s not in failures]
        if stalled:
            raise UserError(stalled_message(stage.name, failures, lost, self.ex.stall_timeout_s))
        if failures or lost:
            raise UserError(failed_message(stage.name, failures, lost, self.ex.shard_retries))

    @staticmethod
    def _rows(ds):
        """The dataset's rows, then None if Ray Data gave up on it for making no progress (see Stalls)."""
        from ray.data.exceptions import ExecutionTimeoutError

        try:
            yield from ds.iter_rows()
        except ExecutionTimeoutError:
            yield None

    def _dataset(self, stage, shards, assets, token: str, progress, later=()):
        import ray.data

        from cai_pipeline.console import libraries_quiet
        from cai_pipeline.executors.ray_worker import ShardWorker

        pool = pool_size(self.ex.actors, len(shards))
        low = pool.get("size", pool.get("min_size"))
        check_resources(self.ex, low, self._resources(), local=self.local_instance)
        quiet = libraries_quiet()
        kwargs = {"config": worker_config(self.cfg), "stage": stage.name, "probe": token, "hashes": assets.hashes,
                  "threads": max(1, int(self.ex.cpus_per_actor)), "quiet": quiet, "progress": progress,
                  "version": __version__, "later": tuple(s.name for s in later),
                  "niceness": os.getpriority(os.PRIO_PROCESS, 0)}
        with data_context(max_errored_blocks=-1, enable_progress_bars=False, print_on_execution_start=not quiet,
                          execution_no_progress_timeout_s=self.ex.stall_timeout_s), \
                warnings.catch_warnings():
            # max_task_retries has no named parameter in Ray 2.60 yet (ray #65227 named the others)
            warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
            ds = ray.data.from_items([{"shard": i} for i in shards], override_num_blocks=len(shards))
            return ds.map_batches(
                ShardWorker, fn_constructor_kwargs=kwargs, batch_size=1,
                compute=ray.data.ActorPoolStrategy(**pool, max_tasks_in_flight_per_actor=1),
                num_cpus=self.ex.cpus_per_actor, num_gpus=self.ex.gpus_per_actor or None,
                max_restarts=-1, max_task_retries=self.ex.shard_retries)

    # -- the Ray instance

    def _connect(self) -> None:
        ray = import_ray()
        if ray.is_initialized():  # the caller's own connection (a notebook, a test): use it, leave it be
            return
        from cai_pipeline.console import libraries_quiet

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time
        level = logging.WARNING if libraries_quiet() else logging.INFO
        if libraries_quiet():
            quiet_ray()
        if self.ex.address is None:
            ray.init(address="local", include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                     logging_level=level, _system_config=LOCAL_SYSTEM_CONFIG)
            self.local_instance = True
        else:
            try:
                ray.init(address=self.ex.address, logging_level=level)
            except (ConnectionError, RuntimeError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"executor.address: cannot reach a Ray cluster at {self.ex.address} ({first[:200]}); "
                                "start one with `ray start --head`, or leave executor.address unset for a local "
                                "instance") from None
        self.connected = True

    def _resources(self) -> dict:
        import ray

        return ray.cluster_resources()

    def _write_probe(self, store) -> str:
        from cai_pipeline.store import atomic_write_text

        token = uuid.uuid4().hex
        atomic_write_text(store.layout.workers_probe, token + "\n")
        self.probes.add(store.layout.workers_probe)
        return token

    def _add_engine_counts(self, role: str, counts: dict) -> None:
        entry = self.stats.setdefault(role, {"retries": 0, "errors": {}, "loads": 0})
        entry["retries"] += counts.get("retries", 0)
        entry["loads"] += counts.get("loads", 0)  # engines (model loads) the actors built
        for reason, n in counts.get("errors", {}).items():
            entry["errors"][reason] = entry["errors"].get(reason, 0) + n

    # -- the executor protocol

    def release(self) -> None:
        """Before training: the driver's engine, and a Ray instance we started, give their memory back."""
        self.local.release()
        self._shutdown()

    def close(self) -> None:
        self.local.close()
        self._shutdown()
        for probe in self.probes:
            probe.unlink(missing_ok=True)
        self.probes.clear()

    def _shutdown(self) -> None:
        if self.connected:
            import ray

            ray.shutdown()
            self.connected = self.local_instance = False

    def engine_stats(self) -> dict:
        return {**self.local.engine_stats(), **self.stats}
