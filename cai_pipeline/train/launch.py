"""Data-parallel training: this process launches the training processes and waits; they only train.

The process that runs `cai train` (or `cai run`) keeps the run folder's lock and writes the manifest, as it
does with one process. It starts train.nproc workers with torch's elastic launcher (torchrun), or with
`accelerate launch` and train.accelerate_config (FSDP, DeepSpeed); each worker runs `loop.train_here` and
nothing else — no pipeline, no lock, no manifest. Rank 0 writes every file of the training and hands its
summary back through a private temporary folder; a worker's UserError comes back the same way, and ends as
the one line the CLI prints.

Facts this rests on (DESIGN.md, "Scale-out"): `accelerate launch --cpu --num_processes N` starts one process
(accelerate issue #2741), so torchrun is the default launcher; accelerate runs DDP on CPU (gloo) only with
ACCELERATE_USE_CPU=true and the launcher's LOCAL_RANK/WORLD_SIZE; its own CPU tests set GLOO_SOCKET_IFNAME=lo.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from cai_pipeline.errors import UserError
from cai_pipeline.train.job import TrainJob

WORKER_ENV = "CAI_TRAIN_WORKER"


def needs_launcher(cfg) -> bool:
    """More than one process (or an accelerate config): the training runs in workers this process starts."""
    return cfg.nproc > 1 or cfg.accelerate_config is not None


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def launcher_command(cfg, spec: Path) -> list[str]:
    worker = ["-m", "cai_pipeline.train.launch", str(spec)]
    if cfg.accelerate_config:
        if not Path(cfg.accelerate_config).is_file():
            raise UserError(f"train.accelerate_config: {cfg.accelerate_config} does not exist; give an "
                            "`accelerate config` YAML file (or leave it out to launch with torchrun)")
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.accelerate_config,
                "--num_processes", str(cfg.nproc), *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.nproc}", *worker]


def worker_env(cfg) -> dict[str, str]:
    import torch

    import cai_pipeline

    env = {**os.environ, WORKER_ENV: "1", "TOKENIZERS_PARALLELISM": "false"}
    root = str(Path(cai_pipeline.__file__).resolve().parent.parent)  # the workers import this very package
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # else accelerate sees LOCAL_RANK, no GPU, and trains undistributed
        if sys.platform.startswith("linux"):
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        # torchrun would give every worker one thread; share the cores out instead
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc)))
    return env


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so a `kill -9` of `cai train` (which frees the folder
    lock) never leaves workers training on, unseen, into the same folder."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def run_workers(job: TrainJob) -> dict:
    """Launch the workers, wait for them, and return rank 0's summary (or raise a worker's UserError)."""
    if os.environ.get("WORLD_SIZE", "1") != "1" or "LOCAL_RANK" in os.environ:
        raise UserError("cai train was started by a distributed launcher; it launches its own processes: run "
                        "`cai train CONFIG --nproc N` (with --accelerate-config FILE for FSDP/DeepSpeed) instead")
    cfg = job.cfg
    with tempfile.TemporaryDirectory(prefix="cai-train-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"job": job.to_json(), "results": tmp}))
        proc = subprocess.run(launcher_command(cfg, spec), env=worker_env(cfg), preexec_fn=die_with_parent,
                              check=False)
        results = {p.name: json.loads(p.read_text()) for p in sorted(Path(tmp).glob("result-*.json"))}
    errors = [r["error"] for r in results.values() if "error" in r]
    if errors:
        raise UserError(errors[0])
    if proc.returncode != 0 or "result-0.json" not in results:
        raise RuntimeError(f"the {cfg.nproc} training processes failed (exit {proc.returncode}); see their output above")
    return results["result-0.json"]["summary"]


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, default=str))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """A worker: `python -m cai_pipeline.train.launch SPEC`, started by the launcher, never by hand."""
    die_with_parent()
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.train.loop import train_here

    rank, results = int(os.environ.get("RANK", "0")), Path(spec["results"])
    quiet_libraries(False)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    try:
        summary = train_here(TrainJob.from_json(spec["job"]))
    except UserError as e:
        # Exit 0: every process meets the same bad input, and torchrun would add its own traceback to the line.
        _write(results / f"result-{rank}.json", {"error": str(e)})
        return 0
    if rank == 0:
        _write(results / "result-0.json", {"summary": summary})
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
