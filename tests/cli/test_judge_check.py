"""`cai judge-check`, both ways in: a run config (the run's judge on the run's pairs, into <out_dir>/judge-check/)
and --data (labelled pairs, into --out), against a planted-bias judge; and its one-line errors."""

from __future__ import annotations

import json

import pytest

from cai_pipeline import cli
from cai_pipeline.judge_check.summary import JudgeCheckSummary
from cai_pipeline.store import RunLayout
from tests import planted_judge as planted
from tests.conftest import REPO, one_line
from tests.judge_check.test_profile import make_pairs


@pytest.fixture(scope="module")
def judge():
    with planted.PlantedJudge(planted.longer) as j:
        yield j


def test_data_form_writes_the_profile_and_flags_the_planted_bias(judge, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt[0]["content"], "chosen": p.a, "rejected": p.b}) + "\n"
                            for p in make_pairs(6)))
    out = tmp_path / "check"
    code = cli.main(["judge-check", "--data", str(data), "--engine", "openai", "--base-url", judge.url, "--model",
                     planted.MODEL, "--out", str(out), "--principles", "1", "--bootstrap", "200", "--benign",
                     "--probes", "position,verbosity,markdown,refusal"])
    assert code == 0
    summary = JudgeCheckSummary.model_validate_json((out / "summary.json").read_text())
    assert summary.judge == planted.MODEL and summary.flagged() == ["verbosity"]
    assert list(summary.probes) == ["position", "verbosity", "markdown", "refusal"]
    assert set(json.loads((out / "summary.json").read_text())["probes"]["verbosity"]) == {
        "shift", "ci_low", "ci_high", "n", "flagged"}  # the contract's keys, exactly
    assert "| verbosity |" in (out / "README.md").read_text() and "FLAG" in (out / "README.md").read_text()
    assert (out / "shifts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "flagged: verbosity" in capsys.readouterr().out


def test_run_form_probes_the_runs_pairs_into_its_folder(judge, tmp_path):
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline
    from tests.echo_engine import EchoEngine

    overrides = [f"out_dir={tmp_path / 'run'}", "prompts.limit=3", "stages=[sample,pairs]"]
    run_pipeline(load_config(REPO / "configs" / "demo.yaml", overrides), engine=EchoEngine(), summary=False,
                 report=False)
    code = cli.main(["judge-check", str(REPO / "configs" / "demo.yaml"), *overrides, "engine.kind=openai",
                     f"engine.base_url={judge.url}", f"judge.model={planted.MODEL}", "--principles", "1",
                     "--bootstrap", "100", "--probes", "position,verbosity,self", "--limit", "2"])
    assert code == 0
    layout = RunLayout(tmp_path / "run").judge_check
    summary = JudgeCheckSummary.model_validate_json(layout.summary.read_text())
    assert summary.settings.pairs == 2 and summary.settings.source == str(tmp_path / "run")
    assert "not the run's policy" in summary.skipped["self"]  # judge.model differs from the model that wrote
    assert summary.flagged() == ["verbosity"]


@pytest.mark.parametrize("args,needles", [
    (["--data", "x.jsonl", str(REPO / "configs" / "demo.yaml")], ["not both"]),
    ([], ["give a run config"]),
    (["--data", "x.jsonl"], ["--out: required with --data"]),
    (["--probes", "lenght"], []),  # argparse's own error: exit 2 with usage
])
def test_mistakes_are_one_line(args, needles, capsys):
    try:
        code = cli.main(["judge-check", *args])
    except SystemExit as e:  # argparse
        code = e.code
        assert "unknown probe 'lenght'" in capsys.readouterr().err
        assert code == 2
        return
    one_line(capsys, code, *needles)


def test_a_run_without_pairs_says_what_to_run(tmp_path, capsys):
    code = cli.main(["judge-check", str(REPO / "configs" / "demo.yaml"), f"out_dir={tmp_path / 'none'}"])
    one_line(capsys, code, "no pairs in the run folder", "cai run")


def test_the_data_forms_out_folder_is_never_someone_elses(tmp_path, capsys):
    """--out names a folder we write README.md, summary.json and shifts.png into: one with files of the user's
    is refused before any model loads (--model names none that exists), and left as it was."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt[0]["content"], "chosen": p.a, "rejected": p.b}) + "\n"
                            for p in make_pairs(2)))
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("my project")
    code = cli.main(["judge-check", "--data", str(data), "--model", str(tmp_path / "none"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--out" in err and "did not write" in err and len(err.strip().splitlines()) == 1
    assert (out / "README.md").read_text() == "my project"
