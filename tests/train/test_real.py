"""The real embedded model: each loss learns a small preference set, and its checkpoint loads in the hf engine;
SL-CAI (`cai train configs/demo.yaml train.loss=sft`) on a run's SFT dataset gives a checkpoint that both
engines generate with, and DPO from that checkpoint works.

8 pairs whose chosen answer is pirate talk the base model finds unlikely (so every loss starts with reward
accuracy 0 on them), 3 epochs of batch 4 = 6 steps, bf16 autocast where the CPU has it. About 15 s a loss.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from cai_pipeline.stages.train import train_run as train
from cai_pipeline.train.plots import read_metrics
from tests.conftest import REPO, missing

from .conftest import chat_pair, write_split

pytestmark = pytest.mark.model

QUESTIONS = ["How do I boil an egg?", "What is the capital of France?", "Give me a tip for sleeping better.",
             "How can I learn to code?", "What should I cook tonight?", "How do plants grow?",
             "Why is the sky blue?", "How do I stay focused?"]
PIRATE = "Arr, matey! A fine question ye ask, and here be me answer, savvy?"
PLAIN = "Here is a helpful answer to your question."


@pytest.fixture(scope="module")
def real_runs(model_path, tmp_path_factory):
    """train() once per loss on the embedded model, on demand; the test split is the training pairs."""
    root = tmp_path_factory.mktemp("real")
    rows = [chat_pair(q, PIRATE, PLAIN) for q in QUESTIONS]
    write_split(root / "prefs", "train", rows)
    write_split(root / "prefs", "test", rows)
    done = {}

    def run(loss: str) -> dict:
        if loss not in done:
            from cai_pipeline.config import RunConfig

            cfg = RunConfig.model_validate({"out_dir": str(root / loss), "seed": 0, "train": {
                "model": model_path, "data": str(root / "prefs"), "loss": loss, "lr": 5e-5, "epochs": 3,
                "batch_size": 4, "warmup_ratio": 0.0, "max_length": 128, "max_prompt_length": 64, "plots": False,
                "save_every": None}})  # resumable states are test_crash.py's
            done[loss] = train(cfg)
        return done[loss]

    yield run
    shutil.rmtree(root, ignore_errors=True)  # four 0.5 GB checkpoints: CI's disk is not ours to fill


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "orpo"])
def test_real_run_lowers_loss_and_raises_accuracy(real_runs, loss):
    s = real_runs(loss)
    before, after = s["eval_before"], s["eval_after"]
    assert s["steps"] == 6
    assert after["loss"] < before["loss"]
    assert after["rewards/accuracies"] > before["rewards/accuracies"]
    assert after["rewards/margins"] > before["rewards/margins"]


def test_checkpoint_loads_in_hf_engine_and_generates(real_runs):
    from cai_pipeline.engines import GenParams, make_engine

    checkpoint = real_runs("dpo")["checkpoint"]
    engine = make_engine(kind="hf", model=checkpoint, batch_size=2)
    try:
        out = engine.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                              GenParams(n=1, temperature=0.0, max_tokens=12, seed=0))
    finally:
        engine.close()
    assert len(out) == 1 and len(out[0]) == 1
    assert out[0][0].finish_reason in ("stop", "length") and out[0][0].text.strip()


def test_checkpoint_loads_in_transformers(real_runs):
    """The same folder through plain transformers: weights, tokenizer and chat template all there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint = real_runs("dpo")["checkpoint"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert torch.isfinite(logits).all()
    assert "<|im_start|>assistant" in tokenizer.chat_template


def test_packed_scoring_matches_naive_on_the_embedded_model(model_path):
    from cai_pipeline.train.data import collate_pairs, end_token_ids, tokenize_rows
    from cai_pipeline.train.modeling import MODEL_INPUTS, PairScorer, load_policy

    tokenizer, lm = load_policy(model_path)
    rows = [{"_file": "m", **chat_pair(QUESTIONS[i], PIRATE, PLAIN)} for i in range(2)]
    pairs = tokenize_rows(rows, tokenizer, max_length=128, max_prompt_length=64, end_ids=end_token_ids(tokenizer))
    batch = collate_pairs([pairs[0], pairs[1]], tokenizer.pad_token_id)
    with torch.no_grad():
        packed, _ = PairScorer(lm)(**{k: batch[k] for k in MODEL_INPUTS})
        naive = []
        for completions in (pairs.chosen, pairs.rejected):
            for i in range(2):
                ids = torch.tensor([list(pairs.prompt[i]) + list(completions[i])])
                logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1], -1)
                start = len(pairs.prompt[i]) - 1
                naive.append(logp[start:].gather(-1, ids[0, start + 1 :, None]).sum())
    assert torch.allclose(packed, torch.stack(naive), atol=1e-3)


# ---------------------------------------------------------------------------------------------- SL-CAI


@pytest.fixture(scope="module")
def sl_cai(model_path, hf_engine, tmp_path_factory):
    """A real run (2 prompts × 2 samples: sample → one critique/revision round → export, on the hf engine), then
    `cai train configs/demo.yaml train.loss=sft` on its datasets/sft, then DPO from that checkpoint into a
    folder of its own."""
    from cai_pipeline.cli import main
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("sl-cai")
    demo = str(REPO / "configs" / "demo.yaml")
    # the run's own settings, which `cai train` must be given too (a run folder refuses other settings)
    run = [f"out_dir={root / 'run'}", "prompts.limit=2", "sample.max_tokens=16", "revise.max_tokens=16",
           "revise.rounds=1", "revise.few_shot=0", "export.test_fraction=0.5", "export.drop_truncated=false",
           "stages=[sample,revise,pairs,export]"]  # 16 tokens cut most replies short: keep them, flagged
    run_pipeline(load_config(demo, run), engine=hf_engine, summary=False)
    common = ["train.lr=5e-5", "train.max_length=256", "train.max_prompt_length=128", "train.plots=false",
              "train.save_every=null"]  # resumable states are test_crash.py's
    assert main(["train", demo, "train.loss=sft", *run, "train.epochs=3", *common]) == 0
    write_split(root / "prefs", "train", [chat_pair(q, PIRATE, PLAIN, p_chosen=0.9) for q in QUESTIONS])
    assert main(["train", demo, f"out_dir={root / 'dpo'}", f"train.model={root / 'run' / 'checkpoint'}",
                 f"train.data={root / 'prefs'}", "train.precision=fp32", *common]) == 0
    summaries = {name: json.loads((root / name / "manifest.json").read_text())["stages"]["train"]["summary"]
                 for name in ("run", "dpo")}
    yield {"root": root, "sft": summaries["run"], "dpo": summaries["dpo"]}
    shutil.rmtree(root, ignore_errors=True)


def test_sl_cai_trains_on_the_runs_sft_dataset(sl_cai):
    import pandas as pd

    s, sft = sl_cai["sft"], sl_cai["root"] / "run" / "datasets" / "sft"
    rows = {split: len(pd.read_parquet(sft / f"{split}-00000-of-00001.parquet")) for split in ("train", "test")}
    assert rows["train"] > 0 and rows["test"] > 0
    assert s["loss_type"] == "sft" and s["reference"] == "none"
    assert {split: c["rows"] + sum(c["rejected"].values()) for split, c in s["counts"].items()} == rows
    steps = [r for r in read_metrics(Path(s["log_dir"]) / "metrics.jsonl") if "loss" in r]
    assert len(steps) == s["steps"] == 3 * -(-s["counts"]["train"]["rows"] // 4)
    assert steps[-1]["loss"] < steps[0]["loss"]  # three passes over the same rows at lr 5e-5


def test_dpo_from_the_sft_checkpoint(sl_cai):
    """The SFT checkpoint is the policy and, by default, the reference: at step 0 they are one model (the
    loss is exactly ln 2 whatever the soft label)."""
    s = sl_cai["dpo"]
    assert s["loss_type"] == "dpo" and s["reference"] == "computed" and s["steps"] == 2
    first = [r for r in read_metrics(Path(s["log_dir"]) / "metrics.jsonl") if "loss" in r][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)


def _generate(kind: str, checkpoint: str) -> list:
    from cai_pipeline.engines import GenParams, make_engine

    extra = {"seed": 0, "max_model_len": 512} if kind == "vllm" else {"batch_size": 2}
    engine = make_engine(kind=kind, model=checkpoint, **extra)
    try:
        return engine.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                               GenParams(n=1, temperature=0.0, max_tokens=12, seed=0))
    finally:
        engine.close()


def test_sft_checkpoint_generates_in_the_hf_engine(sl_cai):
    out = _generate("hf", sl_cai["sft"]["checkpoint"])
    assert len(out) == 1 and len(out[0]) == 1
    assert out[0][0].finish_reason in ("stop", "length") and out[0][0].text.strip()


@pytest.mark.vllm
def test_sft_checkpoint_generates_in_the_vllm_engine(sl_cai):
    if importlib.util.find_spec("vllm") is None:  # like tests/conftest.py: skip locally, fail under CI=true
        missing("vLLM is not installed (pip install 'cai-pipeline[cpu]')")
    out = _generate("vllm", sl_cai["sft"]["checkpoint"])
    assert len(out) == 1 and len(out[0]) == 1
    assert out[0][0].finish_reason in ("stop", "length") and out[0][0].text.strip()
