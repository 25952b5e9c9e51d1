"""The self-judging warning (cai_pipeline/judge_roles.py): when it applies, and that `cai run`, `cai audit` and
`cai iterate` say it in one line and record it (manifest, dataset card, audit README, iterate.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai_pipeline.config import load_config
from cai_pipeline.judge_roles import run_warnings, same_model, self_judge_warning
from tests.conftest import REPO, later_wins


def test_same_model_by_name_or_by_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (tmp_path / "link").symlink_to(folder)
    assert same_model("embedded", "embedded") and same_model("embedded", str(folder))
    assert same_model(str(tmp_path / "link"), str(folder))
    assert not same_model("embedded", "org/other") and not same_model("embedded", None)
    assert not same_model(str(tmp_path / "missing-a"), str(tmp_path / "missing-b"))


def test_the_warning_names_the_risk_and_the_fix():
    line = self_judge_warning("embedded", "embedded")
    assert "is the policy" in line and "2404.13076" in line and "2502.01534" in line and "judge.model" in line
    assert "\n" not in line
    assert "the model the policy started from" in self_judge_warning("base", "ckpt", "base")
    assert self_judge_warning("big-judge", "embedded", "embedded") is None


@pytest.mark.parametrize("overrides,judge,audit", [
    ([], True, True),                                    # the default: one model for everything
    (["judge.model=org/judge"], False, False),           # the audit's judge defaults to judge.model
    (["audit.judge.model=org/judge"], True, False),
    (["audit.model=org/trained", "train.model=org/base", "judge.model=org/base"], False, True),
])
def test_which_stages_warn(overrides, judge, audit, tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", [f"out_dir={tmp_path}", *overrides])
    found = run_warnings(cfg, {"judge", "audit", "export"})
    assert (found["judge"] is not None, found["audit"] is not None) == (judge, audit)
    assert set(run_warnings(cfg, {"sample", "export"})) == set()


def run(tmp_path, *overrides):
    from cai_pipeline.pipeline import run_pipeline
    from tests.echo_engine import EchoEngine

    cfg = load_config(REPO / "configs" / "demo.yaml", later_wins(
        f"out_dir={tmp_path / 'run'}", "prompts.limit=2", "judge.min_margin=0", "judge.drop_inconsistent=false",
        "stages=[sample,revise,pairs,judge,export]", *overrides))
    return run_pipeline(cfg, engine=EchoEngine(), summary=False, report=False)


def test_cai_run_says_it_once_and_records_it_in_the_manifest_and_the_card(tmp_path, capsys):
    manifest = run(tmp_path)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "the judge (embedded) is the policy" in err[0]
    assert manifest["judge_warnings"] == {"judge": err[0].removeprefix("warning: ")}
    card = (tmp_path / "run" / "datasets" / "README.md").read_text()
    assert "## Warning: the judge graded its own model" in card and "2404.13076" in card


def test_a_different_judge_is_not_warned_about(tmp_path, capsys):
    manifest = run(tmp_path, "judge.model=org/other-judge")
    assert "warning:" not in capsys.readouterr().err and manifest["judge_warnings"] == {"judge": None}
    assert "Warning" not in (tmp_path / "run" / "datasets" / "README.md").read_text()


def test_cai_iterate_says_it_once_and_records_it(tmp_path, monkeypatch, capsys):
    import cai_pipeline.pipeline
    from cai_pipeline.iterate import run_iterate
    from tests.test_iterate import fake_pipeline, top

    warned: list[bool] = []
    fake = fake_pipeline({}, [])
    monkeypatch.setattr(cai_pipeline.pipeline, "run_pipeline",
                        lambda rcfg, **kw: warned.append(kw.get("warn", True)) or fake(rcfg, **kw))
    cfg = top(tmp_path, "iterate.rounds=1", "iterate.audit_base=false", "prompts.limit=20")
    record = run_iterate(cfg, report=False, echo=lambda _: None)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(err) == 1 and "is the policy" in err[0] and record["judge_warning"] in err[0]
    assert warned == [False, False]  # the rounds do not say it again
    manifest = json.loads((Path(cfg.out_dir) / "manifest.json").read_text())
    assert manifest["judge_warnings"]["iterate"] == record["judge_warning"]
