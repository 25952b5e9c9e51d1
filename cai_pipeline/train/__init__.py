"""The preference trainer: pure losses, chat-template tokenisation, a plain accelerate loop.

`train(job)` is the entry point: a TrainJob (job.py) says what to train on and where to write; the trainer
knows models, data and paths only — nothing of stages, pipelines or run configs (stages/train.py adapts a
run to it)."""

from __future__ import annotations


def train(job) -> dict:
    """Train as `job` (a TrainJob) says; returns the summary (also written to <log_dir>/summary.json). With
    train.nproc > 1 (or an accelerate config) this process only launches the workers (launch.py), which
    train, and returns the summary their rank 0 wrote."""
    from cai_pipeline.train import launch, loop

    if launch.needs_launcher(job.cfg) and not launch.in_worker():
        return launch.run_workers(job)
    return loop.train_here(job)
