"""`cai train CONFIG out_dir=RUN` on a run made with data overrides: training reads the run's datasets, so only
train.* matters (the rest is the run's, from its manifest), and the run still resumes as it was made. And
training says how far it is, in plain lines, off a terminal too (issue 19).

The run is made once by a stand-in engine; the trainings are the tiny random llama's one or two steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai_pipeline import console
from cai_pipeline.cli import main
from cai_pipeline.config import load_config
from cai_pipeline.pipeline import run_pipeline
from tests.conftest import REPO, later_wins
from tests.echo_engine import EchoEngine
from tests.train.conftest import tiny_model  # noqa: F401 - the fixture

CONFIG = str(REPO / "configs" / "demo.yaml")
DATA = ["prompts.limit=3", "sample.max_tokens=8", "sample.temperature=0.3", "revise.max_tokens=8", "revise.rounds=1",
        "revise.few_shot=0", "judge.principles=1", "stages=[sample,revise,pairs,judge,export]"]
SFT = ["train.loss=sft", "train.batch_size=1", "train.precision=fp32", "train.plots=false", "train.max_length=64",
       "train.max_prompt_length=32", "--no-report"]


@pytest.fixture
def run(tmp_path) -> Path:
    out = tmp_path / "run"
    run_pipeline(load_config(CONFIG, [f"out_dir={out}", *DATA]), engine=EchoEngine(), summary=False, report=False)
    return out


def test_train_on_a_run_made_with_data_overrides_needs_only_train_keys(run, tiny_model, capsys):  # noqa: F811
    before = json.loads((run / "manifest.json").read_text())
    code = main(["train", CONFIG, f"out_dir={run}", f"train.model={tiny_model}", "train.max_steps=1", *SFT])
    assert code == 0, capsys.readouterr().err
    after = json.loads((run / "manifest.json").read_text())
    assert after["fingerprints"] == before["fingerprints"]  # the shards are still the run's own
    assert after["config"]["prompts"]["limit"] == 3 and after["config"]["train"]["model"] == tiny_model
    assert (run / "checkpoint" / "model.safetensors").exists()
    # the run resumes as it was made: nothing to redo, nothing refused
    assert main(["run", CONFIG, f"out_dir={run}", *DATA, "--no-report"]) == 0, capsys.readouterr().err
    # a changed data setting in `cai run` names the run's value, and does not send the user to --restart
    capsys.readouterr()
    assert main(["run", CONFIG, f"out_dir={run}", *later_wins(*DATA, "stages=[sample]", "sample.max_tokens=9")]) == 2
    err = capsys.readouterr().err
    assert "sample.max_tokens: 8 in the run, 9 now" in err and "would delete" in err


def test_train_on_a_run_notes_a_model_it_does_not_use(run, tiny_model, capsys):  # noqa: F811
    code = main(["train", CONFIG, f"out_dir={run}", "model=someone/else", f"train.model={tiny_model}",
                 "train.max_steps=1", *SFT])
    out = capsys.readouterr().out
    assert code == 0 and "note: training uses the run's model=embedded" in out


def test_training_prints_plain_progress_lines_off_a_terminal(run, tiny_model, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(console, "PLAIN_INTERVAL_S", 0.0)  # a line at every step (30 s apart by default)
    assert main(["train", CONFIG, f"out_dir={run}", f"train.model={tiny_model}", "train.max_steps=3", *SFT]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train: step ")]
    assert [x.split(",")[0] for x in lines] == ["train: step 1/3 (33%)", "train: step 2/3 (67%)",
                                                "train: step 3/3 (100%)"]
    assert all(" loss " in x and " s/step" in x and "elapsed" in x for x in lines) and "ETA" in lines[0]
