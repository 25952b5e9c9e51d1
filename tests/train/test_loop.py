"""The loop on a tiny random llama: accumulation invariance, the reference cache, metrics, config, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cai_pipeline.errors import UserError
from cai_pipeline.stages.train import train_run as train
from cai_pipeline.train import reference
from cai_pipeline.train.loop import batch_loss, make_accelerator
from cai_pipeline.train.plots import read_metrics

from .conftest import SMALL_PAIRS, write_split


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(f"{folder}/model.safetensors")


@pytest.mark.parametrize("loss", ["dpo", "sft"])
def test_step_gradient_does_not_depend_on_the_micro_batches(tiny_model, make_cfg, pairs_dir, loss):
    """One step's gradient is that of Σ contributions / Σ units over the whole step: batch 4 in one backward
    equals batch 1 in four accumulated backwards, to 1e-5. For sft the units are tokens and the micro-batches
    hold different numbers of them, so averaging each micro-batch's own mean would be wrong: checked too."""
    from cai_pipeline.train.data import collate_pairs, end_token_ids, tokenize_rows
    from cai_pipeline.train.loop import batch_units
    from cai_pipeline.train.modeling import PairScorer, load_policy
    from cai_pipeline.train.reference import compute_reference
    from cai_pipeline.train.sft import collate_conversations, tokenize_conversations

    cfg = make_cfg(tiny_model, pairs_dir, loss=loss).train
    tokenizer, lm = load_policy(tiny_model)
    rows = [{"_file": "m", **r} for r in SMALL_PAIRS[:4]]
    lengths = {"max_length": 64, "max_prompt_length": 32, "end_ids": end_token_ids(tokenizer)}
    if loss == "sft":
        answers = [r["chosen"] if i % 2 else r["rejected"] for i, r in enumerate(rows)]  # unequal lengths
        examples = tokenize_conversations([{"_file": "m", "messages": r["prompt"] + a} for r, a in zip(rows, answers)],
                                          tokenizer, **lengths)
        assert len({int(t.sum()) for t in examples.trained}) > 1
        collate, ref = collate_conversations, None
    else:
        examples, collate = tokenize_rows(rows, tokenizer, **lengths), collate_pairs
        with torch.no_grad():  # a reference that differs from the policy, so the DPO gradient is not trivial
            ref = compute_reference(make_accelerator(cfg), lm, [collate([examples[i] for i in range(4)], 0)], 4)
        ref = ref - 0.3 * torch.arange(8.0).view(4, 2)
    scorer = PairScorer(lm)

    def gradient(batch_size: int, per_batch_mean: bool = False) -> dict[str, torch.Tensor]:
        batches = [collate([examples[i] for i in range(s, s + batch_size)], tokenizer.pad_token_id)
                   for s in range(0, 4, batch_size)]
        units = sum(batch_units(b, cfg) for b in batches)
        lm.zero_grad(set_to_none=True)
        for batch in batches:
            total, _ = batch_loss(scorer, batch, ref, cfg)
            (total / batch_units(batch, cfg) / len(batches) if per_batch_mean else total / units).backward()
        return {n: p.grad.clone() for n, p in lm.named_parameters()}

    whole, split = gradient(4), gradient(1)
    for name, g in whole.items():
        assert torch.allclose(g, split[name], atol=1e-5), name
    assert max(g.abs().max().item() for g in whole.values()) > 1e-3  # a real gradient, not zeros
    if loss == "sft":  # the mean of micro-batch means weighs a short conversation's tokens more
        naive = gradient(1, per_batch_mean=True)
        assert max((naive[n] - g).abs().max().item() for n, g in whole.items()) > 1e-4


def test_grad_accumulation_invariance_end_to_end(tiny_model, make_cfg, pairs_dir):
    """Two optimizer steps of train(): batch 4 × accumulation 1 vs batch 1 × accumulation 4 log the same losses
    and end in the same weights, to 1e-5."""
    common = {"lr": 1e-3, "max_steps": 2, "warmup_ratio": 0.0, "lr_schedule": "constant", "max_grad_norm": None}
    a = train(make_cfg(tiny_model, pairs_dir, name="a", batch_size=4, grad_accum=1, **common))
    b = train(make_cfg(tiny_model, pairs_dir, name="b", batch_size=1, grad_accum=4, **common))
    steps = [[r for r in read_metrics(Path(s["log_dir"]) / "metrics.jsonl") if "loss" in r] for s in (a, b)]
    assert [r["step"] for r in steps[0]] == [r["step"] for r in steps[1]] == [1, 2]
    for ra, rb in zip(*steps):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
    assert steps[0][1]["loss"] < steps[0][0]["loss"]  # the first step did something
    wa, wb = _weights(a["checkpoint"]), _weights(b["checkpoint"])
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def test_gradient_checkpointing_changes_nothing(tiny_model, make_cfg, pairs_dir):
    common = {"lr": 1e-3, "max_steps": 2, "warmup_ratio": 0.0, "batch_size": 4}
    plain = train(make_cfg(tiny_model, pairs_dir, name="plain", **common))
    ckpt = train(make_cfg(tiny_model, pairs_dir, name="ckpt", gradient_checkpointing=True, **common))
    assert ckpt["final_loss"] == pytest.approx(plain["final_loss"], abs=1e-5)
    wa, wb = _weights(plain["checkpoint"]), _weights(ckpt["checkpoint"])
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


@pytest.mark.parametrize("shuffle", [True, False])
def test_policy_equals_reference_at_step_0_in_bf16(tiny_model, make_cfg, pairs_dir, shuffle):
    """The reference pass scores the first epoch's own batches, so DPO's first loss is exactly ln 2 even under
    bf16 autocast (where a different batch shape would move the log-probs)."""
    s = train(make_cfg(tiny_model, pairs_dir, precision="bf16", batch_size=3, shuffle=shuffle, max_steps=1))
    first = [r for r in read_metrics(Path(s["log_dir"]) / "metrics.jsonl") if "loss" in r][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert first["rewards/margins"] == 0.0
    assert s["eval_before"]["loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_reference_cache_is_reused(tiny_model, make_cfg, pairs_dir, cai_home, monkeypatch):
    first = train(make_cfg(tiny_model, pairs_dir, name="first", max_steps=1))
    assert first["reference"] == "computed"
    assert len(list((cai_home / "refcache").glob("*.pt"))) == 2  # train and test splits

    def boom(*args, **kwargs):
        raise AssertionError("the reference pass ran again")

    monkeypatch.setattr(reference, "compute_reference", boom)
    second = train(make_cfg(tiny_model, pairs_dir, name="second", max_steps=1, loss="ipo"))
    assert second["reference"] == "cached"
    # Other tokenisation settings are other token ids: a new key, and a new pass.
    with pytest.raises(AssertionError, match="ran again"):
        train(make_cfg(tiny_model, pairs_dir, name="third", max_steps=1, max_length=12, max_prompt_length=6))


def test_reference_cache_key_tracks_the_weights(tiny_model, make_cfg, pairs_dir, tmp_path):
    import shutil

    from cai_pipeline.train.data import end_token_ids, tokenize_rows
    from cai_pipeline.train.modeling import load_policy

    tokenizer, _ = load_policy(tiny_model)
    rows = [{"_file": "m", **r} for r in SMALL_PAIRS]
    pairs = tokenize_rows(rows, tokenizer, max_length=64, max_prompt_length=32, end_ids=end_token_ids(tokenizer))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    key = reference.cache_key(str(copy), pairs, precision="no", settings={})
    assert key == reference.cache_key(str(copy), pairs, precision="no", settings={})
    assert key != reference.cache_key(str(copy), pairs, precision="bf16", settings={})
    (copy / "model.safetensors").write_bytes((copy / "model.safetensors").read_bytes() + b"\0")
    assert key != reference.cache_key(str(copy), pairs, precision="no", settings={})


def test_metrics_plots_summary_and_truncation_counts(tiny_model, make_cfg, tmp_path):
    long = " ".join(["word"] * 80)
    rows = SMALL_PAIRS[:3] + [{**SMALL_PAIRS[3], "prompt": [{"role": "user", "content": long}]}]
    write_split(tmp_path / "d", "train", rows)
    s = train(make_cfg(tiny_model, tmp_path / "d", loss="simpo", max_length=96, max_prompt_length=64, plots=True,
                       epochs=2, batch_size=2))
    assert s["counts"] == {"train": {"rows": 4, "truncated_prompt": 1, "truncated_completion": 0,
                                     "prompt_not_prefix": 0, "rejected": {}}}
    assert s["reference"] == "none" and s["steps"] == 4 and s["eval_before"] is None
    log_dir = tmp_path / "run" / "train"
    rows = read_metrics(log_dir / "metrics.jsonl")
    assert rows[0]["counts"]["train"]["truncated_prompt"] == 1
    step_rows = [r for r in rows if "loss" in r]
    assert len(step_rows) == 4
    expected = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "length/chosen", "length/rejected", "lr", "tokens/s", "grad_norm"}
    assert expected <= step_rows[0].keys()
    assert {"loss.png", "rewards.png", "accuracy.png", "logps.png", "lr.png"} <= {p.name for p in (log_dir / "plots").glob("*.png")}
    assert json.loads((log_dir / "summary.json").read_text())["steps"] == 4


@pytest.mark.parametrize("loss", ["ipo", "orpo"])
def test_other_losses_train(tiny_model, make_cfg, pairs_dir, loss):
    s = train(make_cfg(tiny_model, pairs_dir, loss=loss, lr=1e-3, max_steps=3, warmup_ratio=0.0))
    assert s["eval_after"]["loss"] < s["eval_before"]["loss"]
    assert s["reference"] == ("computed" if loss == "ipo" else "none")


def test_soft_labels(tiny_model, make_cfg, pairs_dir, tmp_path):
    """The judge's p_chosen is the DPO target t: dL/dh = −β(t − σ(βh)), so at t = ½ and h = 0 (policy = its
    reference) the gradient is zero and the weights stay put, while hard labels move them; after a step the
    loss depends on t."""
    common = {"lr": 1e-3, "max_steps": 2, "warmup_ratio": 0.0, "lr_schedule": "constant", "shuffle": False,
              "batch_size": 8}
    for name, p in (("half", 0.5), ("sure", 0.9)):
        write_split(tmp_path / name, "train", [{**r, "p_chosen": p} for r in SMALL_PAIRS])
    half = train(make_cfg(tiny_model, tmp_path / "half", name="h", use_soft_labels=True, **common))
    sure = train(make_cfg(tiny_model, tmp_path / "sure", name="s", use_soft_labels=True, **common))
    hard = train(make_cfg(tiny_model, tmp_path / "sure", name="d", **common))
    base = _weights(tiny_model)
    assert all(torch.equal(base[k], v) for k, v in _weights(half["checkpoint"]).items())
    assert any(not torch.equal(base[k], v) for k, v in _weights(hard["checkpoint"]).items())
    losses = {n: [r["loss"] for r in read_metrics(Path(s["log_dir"]) / "metrics.jsonl") if "loss" in r]
              for n, s in (("half", half), ("sure", sure), ("hard", hard))}
    assert losses["half"] == pytest.approx([math.log(2)] * 2, abs=1e-6)  # h stays 0: −logσ(0) = log 2
    assert losses["sure"][0] == pytest.approx(math.log(2), abs=1e-6) == losses["hard"][0]
    assert losses["sure"][1] != pytest.approx(losses["hard"][1], abs=1e-4)  # same h, other target
    write_split(tmp_path / "nolabels", "train", [{**r, "p_chosen": None} for r in SMALL_PAIRS])
    with pytest.raises(UserError, match="p_chosen"):
        train(make_cfg(tiny_model, tmp_path / "nolabels", use_soft_labels=True))


def test_lora_run_saves_a_merged_checkpoint(tiny_model, make_cfg, pairs_dir):
    s = train(make_cfg(tiny_model, pairs_dir, lr=1e-2, max_steps=2, lora={"r": 4, "alpha": 8}))
    weights = _weights(s["checkpoint"])
    assert not any("lora" in k for k in weights)
    base = _weights(tiny_model)
    assert any(not torch.allclose(base[k], weights[k]) for k in base)


def test_config_errors_are_one_line(tmp_path):
    from cai_pipeline.config import load_config

    for overrides, needle in ((["train.loss=simpo", "train.label_smoothing=0.1"], "dpo only"),
                              (["train.max_length=64", "train.max_prompt_length=64"], "max_prompt_length"),
                              (["train.loss=orpo", "train.beta=0.1"], "lam"),
                              (["train.loss=simpo", "train.reference_model=x"], "reference_model applies"),
                              (["train.loss=sft", "train.reference_model=x"], "reference_model applies"),
                              (["train.nproc=0"], "train.nproc"),
                              (["train.sft_turns=first"], "train.sft_turns"),
                              (["train.loss=kto"], "train.loss")):
        with pytest.raises(UserError, match=needle):
            load_config(None, ["out_dir=x", *overrides])
    # SFT leaves the preference settings alone: one config serves both CAI phases
    cfg = load_config(None, ["out_dir=x", "train.loss=sft", "train.use_soft_labels=true", "train.beta=0.3"])
    assert cfg.train.is_sft and not cfg.train.needs_reference


def test_reference_model_is_the_reference(tiny_model, make_cfg, pairs_dir, tmp_path):
    """By default the reference is the policy as loaded (DPO's first loss is exactly ln 2); with
    train.reference_model another model's log-probs are the reference, and the first loss is not ln 2."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    other = tmp_path / "other"
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model)).save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(other)
    firsts = {}
    for name, ref in (("own", None), ("same", tiny_model), ("other", str(other))):
        s = train(make_cfg(tiny_model, pairs_dir, name=name, max_steps=1, reference_model=ref))
        firsts[name] = [r for r in read_metrics(Path(s["log_dir"]) / "metrics.jsonl") if "loss" in r][0]["loss"]
    assert firsts["own"] == pytest.approx(math.log(2), abs=1e-7) == firsts["same"]
    assert abs(firsts["other"] - math.log(2)) > 1e-3


def test_cli(tiny_model, pairs_dir, tmp_path, capsys):
    from cai_pipeline.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'cli'}\nmodel: {tiny_model}\ntrain:\n  data: {pairs_dir}\n"
                   "  max_steps: 1\n  precision: fp32\n  plots: false\n")
    assert main(["train", str(cfg), "train.loss=simpo"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {tmp_path / 'cli' / 'checkpoint'}" in out and "1 steps" in out
    assert (tmp_path / "cli" / "checkpoint" / "model.safetensors").exists()
    assert (tmp_path / "cli" / "train" / "metrics.jsonl").exists()
    assert main(["train", str(cfg), "train.data=/nonexistent/prefs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/nonexistent/prefs does not exist" in err


def test_every_preference_loss_has_its_entry_and_an_unknown_one_is_an_error():
    """The loss table is explicit: no `else` that would train ORPO for a loss added to the config only."""
    from typing import get_args

    from cai_pipeline.train.config import TrainConfig
    from cai_pipeline.train.loop import PAIR_LOSSES, pair_losses

    assert set(get_args(TrainConfig.model_fields["loss"].annotation)) - {"sft"} == set(PAIR_LOSSES)
    unknown = TrainConfig.model_construct(**{**TrainConfig().model_dump(), "loss": "kto"})
    logps, counts = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError, match="train.loss='kto' has no entry in PAIR_LOSSES"):
        pair_losses(unknown, logps, counts, torch.zeros(2, 2), torch.full((2,), 0.5))
