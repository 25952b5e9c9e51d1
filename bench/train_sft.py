"""SFT benchmark: our trainer (`loss: sft`) against TRL's SFTTrainer on the embedded model, on CPU.

    .venv/bin/python bench/train.py --suite sft                 # 64 conversations, batch 4, max_length 256
    .venv/bin/python bench/train.py --suite sft --smoke         # 8 conversations: checks it runs, measures nothing

The same real conversations (hh-rlhf harmless-base test, each transcript with its chosen last reply, as chat
messages), tokenised once by us: TRL gets our token ids and labels (-100 off the trained tokens, i.e. the last
assistant turn), so both train on exactly the same sequences, in file order, batch 4, one epoch, lr 5e-6,
constant schedule, AdamW, clipping 1.0. Each variant in its own process (peak RSS its own). tokens/s is real
(unpadded) tokens over the training loop's seconds; step-1 loss should agree to 1e-4 (both are the mean over the
batch's trained tokens). TRL is a yardstick only (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_average, machine, peak_rss_gib, save  # noqa: E402
from bench.train import HH, hh_to_messages  # noqa: E402

VARIANTS = [("ours", "ours", False), ("ours + grad ckpt", "ours", True),
            ("TRL defaults (grad ckpt)", "trl", True), ("TRL, no grad ckpt", "trl", False)]


def conversations(n: int) -> list[dict]:
    import gzip

    rows = []
    with gzip.open(HH, "rt") as f:
        for line in f:
            rows.append({"messages": hh_to_messages(json.loads(line)["chosen"])})
            if len(rows) == n:
                return rows
    raise SystemExit(f"{HH} has fewer than {n} rows")


def worker_ours(a) -> dict:
    from cai_pipeline.config import RunConfig
    from cai_pipeline.stages.train import train_run as train
    from cai_pipeline.train.plots import read_metrics

    cfg = RunConfig.model_validate({"out_dir": a.tmp, "seed": 0, "train": {
        "model": a.model, "data": a.data, "loss": "sft", "lr": a.lr, "lr_schedule": "constant", "warmup_ratio": 0.0,
        "batch_size": a.batch_size, "epochs": 1, "max_length": a.max_length, "max_prompt_length": a.max_length // 2,
        "precision": a.precision, "shuffle": False, "plots": False, "gradient_checkpointing": a.grad_ckpt,
        "save_every": None}})
    s = train(cfg)
    steps = [r for r in read_metrics(Path(s["log_dir"]) / "metrics.jsonl") if "loss" in r]
    return {"seconds": s["train_seconds"], "tokens_per_s": s["tokens_per_s"], "losses": [r["loss"] for r in steps]}


def worker_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cai_pipeline.train.data import end_token_ids
    from cai_pipeline.train.formats import read_split
    from cai_pipeline.train.sft import tokenize_conversations

    class InOrder(SFTTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    rows = read_split(sorted(Path(a.data).glob("train-*.parquet")), "sft").rows
    convs = tokenize_conversations(rows, tokenizer, max_length=a.max_length, max_prompt_length=a.max_length // 2,
                                   end_ids=end_token_ids(tokenizer, model.generation_config))
    ds = Dataset.from_dict({"input_ids": [x.tolist() for x in convs.ids],
                            "labels": [[t if keep else -100 for t, keep in zip(x.tolist(), m.tolist())]
                                       for x, m in zip(convs.ids, convs.trained)]})
    args = SFTConfig(output_dir=a.tmp, per_device_train_batch_size=a.batch_size, num_train_epochs=1,
                     learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, max_length=a.max_length,
                     logging_steps=1, save_strategy="no", report_to="none", bf16=a.precision == "bf16", seed=0,
                     optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, disable_tqdm=True,
                     dataloader_num_workers=0, use_cpu=True, gradient_checkpointing=a.grad_ckpt,
                     dataset_kwargs={"skip_prepare_dataset": True})
    trainer = InOrder(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    steps = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    return {"seconds": seconds, "tokens_per_s": sum(len(x) for x in convs.ids) / seconds,
            "losses": [h["loss"] for h in steps]}


def run_variant(a, kind: str, grad_ckpt: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", a.model, "--data", a.data, "--precision", a.precision,
           "--batch-size", str(a.batch_size), "--max-length", str(a.max_length), "--lr", str(a.lr)]
    cmd += ["--grad-ckpt"] if grad_ckpt else []
    env = {**os.environ, "CAI_HOME": tempfile.mkdtemp(prefix="bench-cai-home-"), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(results: list[dict]) -> str:
    lines = ["| trainer | tokens/s | peak RSS (GiB) | step-1 loss | step-2 loss |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['tokens_per_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['losses'][0]:.6f} | "
              f"{r['losses'][min(1, len(r['losses']) - 1)]:.6f} |" for r in results]
    by = {r["label"]: r for r in results}
    for ours in ("ours", "ours + grad ckpt"):
        for trl in (label for label in by if label.startswith("TRL")):
            o, t = by[ours], by[trl]
            lines.append(f"- {ours} vs {trl}: tokens/s ×{o['tokens_per_s'] / t['tokens_per_s']:.2f}, peak RSS "
                         f"×{o['peak_rss_gib'] / t['peak_rss_gib']:.2f}, step-1 loss Δ {abs(o['losses'][0] - t['losses'][0]):.1e}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=["ours", "trl"])
    p.add_argument("--smoke", action="store_true", help="8 conversations, max_length 96: checks the suite runs")
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--grad-ckpt", action="store_true")
    a = p.parse_args(argv)
    if a.worker:
        with tempfile.TemporaryDirectory() as tmp:
            a.tmp = tmp
            result = worker_ours(a) if a.worker == "ours" else worker_trl(a)
        print(json.dumps({**result, "peak_rss_gib": peak_rss_gib()}))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cai_pipeline.models import resolve_model

    if a.smoke:
        a.rows, a.max_length = 8, 96
    a.model = a.model or resolve_model("embedded")
    a.data = tempfile.mkdtemp(prefix="bench-sft-")
    pq.write_table(pa.Table.from_pylist(conversations(a.rows)), Path(a.data) / "train-00000.parquet")
    load = load_average()
    results = [{"label": label, **run_variant(a, kind, ckpt)} for label, kind, ckpt in VARIANTS]
    text = report(results)
    print(text)
    if not a.smoke:
        path = save(f"train-sft-{a.precision}", {"machine": machine(), "load_average_start": load,
                                                 "args": {k: v for k, v in vars(a).items() if k != "worker"},
                                                 "results": results})
        print(f"written: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
