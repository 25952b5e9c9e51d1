"""Held-out sets that are held out: word n-gram overlap (a planted 8-gram is found, a 7-word near miss is not),
exact near-duplicate removal (prefix filtering agrees with comparing every pair), and both through their
users: `cai audit` drops or flags overlapping prompts and counts them per source in summary.json and the README;
the prompt loader rejects near-duplicates naming the prompt they repeat; the dataset card says the overlap."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from cai_pipeline.ngrams import gram_hashes, jaccard, near_duplicates, overlaps
from tests.audit.test_logs import audit, planted  # noqa: F401  (the fixture)

EIGHT = "the quick brown fox jumps over the lazy"
SEVEN = "pack my box with five dozen liquor"


def test_a_planted_eight_gram_is_found_and_a_near_miss_is_not():
    checked = [f"Tell me: {EIGHT} dog?", f"Why would you {SEVEN} jugs?", "Something else entirely."]
    reference = ["Nothing here.", f"An essay where {EIGHT.upper()}, again.",  # case and punctuation do not hide it
                 f"Then {SEVEN} bottles, said nobody."]  # the same 7 words: one short of an 8-gram
    assert overlaps(checked, reference, 8) == {0: 1}
    assert overlaps(checked, reference, 7) == {0: 1, 1: 2}  # n is a setting
    # a prompt shorter than n overlaps only an identical one
    assert overlaps(["How are you?", "Hi"], ["how are you", "Hi there, how are you today?"], 8) == {0: 0}


def _corpus(k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)]
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14))) for _ in range(k)]
    # edits of earlier texts: one word changed, dropped or added, so some pairs are near and some are not
    out = []
    for text in base:
        out.append(text)
        if rng.random() < 0.5:
            w = text.split()
            w[rng.randrange(len(w))] = rng.choice(vocab)
            out.append(" ".join(w + ([rng.choice(vocab)] if rng.random() < 0.3 else [])))
    return out


@pytest.mark.parametrize("threshold, n", [(0.8, 3), (0.7, 3), (0.5, 2), (0.9, 1)])
def test_near_duplicates_agree_with_comparing_every_pair(threshold, n):
    texts = _corpus(150, seed=int(threshold * 10) + n)
    sets = [gram_hashes(t, n) for t in texts]
    kept: list[int] = []
    want = {}
    for i, s in enumerate(sets):  # the definition: earliest kept text at or above the threshold
        match = next((j for j in kept if jaccard(s, sets[j]) >= threshold), None)
        if match is None:
            kept.append(i)
        else:
            want[i] = match
    assert near_duplicates(texts, threshold, n) == want and want  # and the corpus does have some


def test_the_prompt_loader_rejects_near_duplicates_naming_the_one_they_repeat(tmp_path):
    from cai_pipeline.inputs import load_prompts

    file = tmp_path / "p.jsonl"
    texts = ["How do I bake a simple loaf of sourdough bread at home?",
             "How do I bake a simple loaf of sourdough bread at home today?",  # one word added
             "How do I fix a flat bicycle tyre on the road?", "How do I bake bread?"]
    file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    loaded = load_prompts(str(file), near=0.8, near_n=3, limit=2)
    assert [r["prompt"][0]["content"] for r in loaded.rows] == [texts[0], texts[2]]
    (reject,) = loaded.rejects
    assert reject["reason"] == "near_duplicate" and loaded.rows[0]["prompt_id"] in reject["detail"]
    assert len(load_prompts(str(file)).rows) == 4  # off: all kept


def _files(tmp_path: Path) -> tuple[Path, Path]:
    prompts = tmp_path / "audit.jsonl"
    asked = [f"Tell me: {EIGHT} dog?", f"Why would you {SEVEN} jugs?", "How do I say thanks in Welsh?",
             "What is a good name for a cat?"]
    prompts.write_text("".join(json.dumps({"prompt": t, "tag": "benign"}) + "\n" for t in asked))
    evals = tmp_path / "evals.jsonl"
    evals.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in
                             [f"Story: {EIGHT} cat.", f"Then {SEVEN} bottles.", "Completely unrelated."]))
    return prompts, evals


def test_the_audit_drops_overlapping_prompts_and_counts_them_per_source(planted, tmp_path):  # noqa: F811
    prompts, evals = _files(tmp_path)
    out = tmp_path / "run"
    assert audit(out, f"audit.prompts={prompts}", f"audit.eval_files=[{evals}]", "audit.model=embedded",
                 "audit.baseline=embedded", "audit.compliance=true") == 0
    summary = json.loads((out / "audit" / "summary.json").read_text())
    d = summary["decontamination"]
    assert d == {"mode": "drop", "n": 8, "checked": 4, "overlapping": {"training prompts": 0, "evals.jsonl": 1},
                 "dropped": 1, "flagged": []}
    assert summary["counts"]["prompts"] == 3  # the near miss is kept
    rejects = pd.read_parquet(out / "rejects" / "audit")
    (row,) = rejects[rejects["reason"] == "contaminated"].itertuples()
    assert "evals.jsonl" in row.detail and "quick brown fox" in row.detail
    readme = (out / "audit" / "README.md").read_text()
    assert "overlapping per source: training prompts: 0; evals.jsonl: 1. 1 dropped" in readme
    from cai_pipeline.report.build import build_document

    assert build_document(out)[0]["audit"]["decontamination"]["dropped"] == 1


def test_flag_keeps_them_and_names_them_and_off_checks_nothing(planted, tmp_path):  # noqa: F811
    prompts, evals = _files(tmp_path)
    for mode, asked in (("flag", 4), ("off", 4)):
        out = tmp_path / mode
        assert audit(out, f"audit.prompts={prompts}", f"audit.eval_files=[{evals}]", "audit.model=embedded",
                     "audit.baseline=embedded", f"audit.decontaminate={mode}") == 0
        summary = json.loads((out / "audit" / "summary.json").read_text())
        assert summary["counts"]["prompts"] == asked and summary["decontamination"]["dropped"] == 0
    flagged = json.loads((tmp_path / "flag" / "audit" / "summary.json").read_text())["decontamination"]["flagged"]
    assert len(flagged) == 1 and flagged[0] in (tmp_path / "flag" / "audit" / "README.md").read_text()


def test_training_prompts_are_the_train_split_and_the_card_says_the_overlap(tmp_path):
    from cai_pipeline.audit.decontam import TRAINING, card_report, training_prompts
    from cai_pipeline.card import _held_out
    from cai_pipeline.config import load_config
    from cai_pipeline.records import PreferenceRecord
    from cai_pipeline.store import RunLayout, write_parquet
    from tests.conftest import REPO

    prompts, _ = _files(tmp_path)
    layout = RunLayout(tmp_path / "run")
    run_prompts = [{"prompt": [{"role": "user", "content": "Not trained on: the split exists."}]}]
    assert training_prompts(layout, run_prompts) == [run_prompts[0]["prompt"]]  # before export: the prompt set
    train = [{"pair_id": "x", "prompt_id": "t1", "prompt": [{"role": "user", "content": f"Write {EIGHT} now"}],
              "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "r"}],
              "p_chosen": 0.7, "revision_principle_ids": [], "judge_principle_ids": [], "origin": "sampled",
              "label_source": "judge", "chosen_truncated": False, "rejected_truncated": False}]
    write_parquet(layout.split_file("preferences", "train"), train, PreferenceRecord)
    assert training_prompts(layout, run_prompts) == [train[0]["prompt"]]
    cfg = load_config(str(REPO / "configs" / "demo.yaml"), [f"out_dir={layout.root}", f"audit.prompts={prompts}"])
    report = card_report(cfg, layout, run_prompts)
    assert report["overlapping"] == {TRAINING: 1} and report["checked"] == 4
    assert "share a word 8-gram with (per source) training prompts: 1; the audit drops them" in _held_out(report)


def test_every_pair_is_compared_only_when_prefixes_share_a_gram():
    """The bound that makes it fast: on 2,000 distinct prompts almost no pair is a candidate."""
    texts = [" ".join(f"t{(i * 7 + k * 13) % 5000}" for k in range(12)) for i in range(2000)]
    assert near_duplicates(texts, 0.8, 3) == {}
