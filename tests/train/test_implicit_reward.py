"""Implicit-reward accuracy (train/implicit_reward.py) equals a hand computation on a tiny model: every
completion's log-probability summed token by token from a plain forward pass, the DPO margin
β·((pc − rc) − (pr − rr)) and IPO's per-token one written out, and the share of pairs it gets right."""

from __future__ import annotations

import pytest
import torch

from tests.train.conftest import SMALL_PAIRS, chat_pair


def _other_tiny(tiny_model: str, tmp_path) -> str:
    """The tiny model with its weights moved by seeded noise: a reference that differs from the policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    out = tmp_path / "reference"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return str(out)


def _by_hand(path: str, tokenizer, row: dict) -> list[tuple[float, int]]:
    """[(Σ log p of the chosen completion's tokens, its length), (the same for rejected)] from one plain forward
    pass each over prompt + completion (no packing), the completion ending at the template's end token."""
    from transformers import AutoModelForCausalLM

    from cai_pipeline.engines.chat import conversation_ids

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = conversation_ids(tokenizer, row["prompt"], add_generation_prompt=True)
    out = []
    for side in ("chosen", "rejected"):
        full = conversation_ids(tokenizer, row["prompt"] + row[side], add_generation_prompt=False)
        end = max(i for i, t in enumerate(full) if t == tokenizer.eos_token_id) + 1  # drop the trailing newline
        ids = torch.tensor([full[:end]])
        with torch.no_grad():
            logp = model(ids).logits.log_softmax(-1)[0]
        total = sum(logp[t - 1, full[t]].item() for t in range(len(prompt), end))
        out.append((total, end - len(prompt)))
    return out


def test_implicit_reward_accuracy_equals_a_hand_computation(tiny_model, tokenizer, tmp_path):
    from cai_pipeline.train.implicit_reward import (
        agreement,
        completion_logps,
        implicit_margins,
        reference_free_margins,
    )

    reference = _other_tiny(tiny_model, tmp_path)
    rows = SMALL_PAIRS[:5] + [chat_pair("Say hi.", "Hi!", "Hello there, friend.")]
    kw = {"max_length": 256, "max_prompt_length": 128, "batch_size": 4}
    pol, counts = completion_logps(tiny_model, rows, key="audit.model", **kw)
    ref, ref_counts = completion_logps(reference, rows, key="train.reference_model", tokenizer_path=tiny_model, **kw)
    assert torch.equal(counts, ref_counts)
    beta = 0.1
    hand_dpo, hand_ipo, hand_free = [], [], []
    for k, row in enumerate(rows):
        (pc, nc), (pr, nr) = _by_hand(tiny_model, tokenizer, row)
        (rc, _), (rr, _) = _by_hand(reference, tokenizer, row)
        assert (counts[k, 0].item(), counts[k, 1].item()) == (nc, nr)
        assert pol[k, 0].item() == pytest.approx(pc, abs=1e-3) and ref[k, 1].item() == pytest.approx(rr, abs=1e-3)
        hand_dpo.append(beta * ((pc - rc) - (pr - rr)))
        hand_ipo.append(beta * ((pc / nc - rc / nc) - (pr / nr - rr / nr)))
        hand_free.append(rc - rr)
    dpo = implicit_margins(pol, ref, counts, beta=beta, loss="dpo")
    ipo = implicit_margins(pol, ref, counts, beta=beta, loss="ipo")
    assert dpo.tolist() == pytest.approx(hand_dpo, abs=1e-3) and ipo.tolist() == pytest.approx(hand_ipo, abs=1e-4)
    assert reference_free_margins(ref, counts, loss="dpo").tolist() == pytest.approx(hand_free, abs=1e-3)
    # the accuracy is the share of pairs whose hand margin is positive; both outcomes occur on these pairs
    right = sum(m > 0 for m in hand_dpo)
    assert 0 < right < len(rows) and sum(agreement(dpo)) == right
    assert agreement(torch.tensor([0.0, -1.0, 2.0])) == [0.5, 0.0, 1.0]  # a tie counts half


def test_the_audit_of_a_dpo_checkpoint_reports_its_agreement_beside_the_base_model(tiny_model, tmp_path, monkeypatch):
    """Through `cai audit` (a stand-in for every engine): the run's checkpoint on the run's held-out pairs, the
    numbers those pairs give by the functions above, in summary.json and the README."""
    import json
    import shutil

    import cai_pipeline.engines
    from cai_pipeline.cli import main
    from cai_pipeline.store import RunLayout
    from cai_pipeline.train.implicit_reward import agreement, completion_logps, implicit_margins
    from tests.audit.test_stage import CONFIG, StandIn
    from tests.train.conftest import write_split

    layout, checkpoint, data = RunLayout(tmp_path / "run"), tmp_path / "trained", tmp_path / "prefs"
    shutil.copytree(tiny_model, checkpoint)  # as if `cai train` had written it (train.out_dir)
    reference = _other_tiny(tiny_model, tmp_path)  # as if it had started from this one
    test = [dict(r, prompt_id=f"p{i}") for i, r in enumerate(SMALL_PAIRS[:4])]
    write_split(data, "train", SMALL_PAIRS[4:])
    write_split(data, "test", test)
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: StandIn())
    assert main(["audit", CONFIG, f"out_dir={layout.root}", "audit.limit=3", "audit.principles=[violence]",
                 f"audit.judge.model={reference}", f"train.reference_model={reference}", f"audit.baseline={reference}",
                 "audit.bootstrap=200", "train.max_length=128",
                 "train.max_prompt_length=64", f"train.out_dir={checkpoint}", f"train.data={data}"]) == 0
    summary = json.loads(layout.audit_summary.read_text())
    got = summary["implicit_reward"]
    kw = {"max_length": 128, "max_prompt_length": 64}
    pol, counts = completion_logps(str(checkpoint), test, key="m", **kw)
    ref, _ = completion_logps(reference, test, key="r", tokenizer_path=str(checkpoint), **kw)
    want = sum(agreement(implicit_margins(pol, ref, counts, beta=0.1, loss="dpo"))) / 4
    assert got["n"] == 4 and got["loss"] == "dpo" and got["beta"] == 0.1
    assert got["checkpoint"]["accuracy"] == pytest.approx(want, abs=1e-4)
    for side in ("checkpoint", "base"):
        assert 0 <= got[side]["ci_low"] <= got[side]["accuracy"] <= got[side]["ci_high"] <= 1
    assert "## Agreement with the learned preferences" in (layout.audit_dir / "README.md").read_text()
