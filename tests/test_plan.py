"""`cai plan` (cai_pipeline/plan.py, cli/plan.py): the planned requests are the run's own for sample, revise and
judge; the --json contract; seconds unknown until something was measured; cost from the price settings;
planned against actual in the manifest and the report."""

from __future__ import annotations

import json

import pytest

import cai_pipeline.plan
from cai_pipeline.cli import main
from cai_pipeline.config import load_config
from cai_pipeline.plan import Plan
from tests.conftest import REPO, later_wins
from tests.echo_engine import EchoEngine

CONFIG = str(REPO / "configs" / "demo.yaml")
SMALL = ["prompts.limit=5", "shard_size=2", "stages=[sample,revise,pairs,judge]", "sample.n=3", "revise.rounds=2",
         "judge.principles=2", "judge.min_margin=0", "judge.drop_inconsistent=false"]


@pytest.fixture(autouse=True)
def echo_tokens(monkeypatch):
    """The CLI counts with the model's tokenizer; here with the echo engine's (no model needed)."""
    monkeypatch.setattr(cai_pipeline.plan, "token_counter", lambda model: (EchoEngine().count_tokens, "echo"))


def run(out, *extra):
    from cai_pipeline.pipeline import run_pipeline

    cfg = load_config(CONFIG, later_wins(f"out_dir={out}", *SMALL, *extra))
    return run_pipeline(cfg, engine=EchoEngine(), summary=False, report=False, warn=False)


def plan_json(capsys, *argv) -> dict:
    assert main(["plan", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("extra", [[], ["revise.rounds=3", "sample.n=2", "pairs.revision=false"],
                                   ["judge.reasoning=true", "revise.mode=rounds"]])
def test_planned_requests_are_the_runs_own(tmp_path, capsys, extra):
    planned = plan_json(capsys, CONFIG, *later_wins(f"out_dir={tmp_path / 'run'}", *SMALL, *extra), "--json")
    manifest = run(tmp_path / "run", *extra)
    cfg = load_config(CONFIG, later_wins(f"out_dir={tmp_path}", *SMALL, *extra))
    assert planned["stages"]["sample"]["requests"] == 5
    assert planned["stages"]["revise"]["requests"] == 5 * cfg.sample.n * cfg.revise.rounds * 2
    for stage in ("sample", "revise", "judge"):
        assert manifest["stages"][stage]["requests"] == planned["stages"][stage]["requests"], stage
    assert manifest["plan"]["stages"]["revise"] == planned["stages"]["revise"]  # the run recorded the same plan
    assert planned["stages"]["sample"]["output_tokens"] == 5 * cfg.sample.n * cfg.sample.max_tokens  # upper bound


def test_each_stage_counts_only_the_tokens_it_generated(tmp_path):
    """The judge shares the policy's engine here: its shards once counted everything that engine had generated
    for sample and revise (the judge's engine is opened lazily, and its count started at zero)."""
    manifest = run(tmp_path / "run")
    stages = manifest["stages"]
    assert stages["sample"]["output_tokens"] == 5 * 3 * 2  # the echo engine's 2 tokens per sequence
    assert stages["revise"]["output_tokens"] == stages["revise"]["sequences"] * 2
    assert stages["judge"]["output_tokens"] == 0  # log-probs only: nothing generated


def test_json_is_the_contract_and_options_go_anywhere(tmp_path, capsys):
    out = f"out_dir={tmp_path / 'new'}"
    a = plan_json(capsys, CONFIG, out, *SMALL, "--json")
    b = plan_json(capsys, "--json", CONFIG, *SMALL, out)
    c = plan_json(capsys, CONFIG, *SMALL[:2], "--json", *SMALL[2:], out)
    assert a == b == c
    Plan.model_validate(a)  # exactly the contract's keys (extra="forbid")
    assert set(a) == {"stages", "total"} and list(a["stages"]) == ["sample", "revise", "pairs", "judge"]
    for entry in [*a["stages"].values(), a["total"]]:
        assert set(entry) == {"requests", "input_tokens", "output_tokens", "seconds", "cost"}
    # nothing measured yet and no prices: unknown, not invented; a stage without a model costs nothing
    assert a["stages"]["sample"]["seconds"] is None and a["total"]["cost"] is None
    assert a["stages"]["pairs"] == {"requests": 0, "input_tokens": 0, "output_tokens": 0, "seconds": 0.0, "cost": None}
    assert a["total"]["requests"] == sum(s["requests"] for s in a["stages"].values())
    assert not (tmp_path / "new").exists()  # planning writes nothing


def test_a_run_folder_gives_lengths_seconds_and_with_prices_a_cost(tmp_path, capsys):
    run(tmp_path / "run")
    prices = ["engine.price_in_per_mtok=2", "engine.price_out_per_mtok=8"]
    after = plan_json(capsys, CONFIG, f"out_dir={tmp_path / 'run'}", *SMALL, *prices, "--json")
    sample = after["stages"]["sample"]
    assert sample["output_tokens"] == 5 * 3 * 2  # the echo engine's 2 tokens per sequence, as observed
    assert sample["seconds"] is not None and after["total"]["seconds"] is not None
    assert sample["cost"] == pytest.approx((sample["input_tokens"] * 2 + sample["output_tokens"] * 8) / 1e6)
    batch = plan_json(capsys, CONFIG, f"out_dir={tmp_path / 'run'}", *SMALL, *prices, "engine.kind=openai",
                      "engine.batch=true", "--json")
    assert batch["total"]["cost"] == pytest.approx(after["total"]["cost"] * 0.5, rel=1e-4)


def test_the_table_names_what_is_unknown_and_why(tmp_path, capsys):
    assert main(["plan", CONFIG, f"out_dir={tmp_path / 'new'}", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "unknown" in out and "--calibrate" in out and "max_tokens" in out
    assert out.splitlines()[0].split()[:4] == ["stage", "requests", "sequences", "input"]


def test_calibration_measures_seconds(tmp_path, capsys, monkeypatch):
    import cai_pipeline.engines

    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: EchoEngine())
    monkeypatch.setattr("cai_pipeline.pipeline.check_models", lambda *a: None)
    planned = plan_json(capsys, CONFIG, f"out_dir={tmp_path / 'new'}", *SMALL, "--calibrate", "2", "--json")
    assert all(s["seconds"] is not None for s in planned["stages"].values())
    assert planned["stages"]["sample"]["requests"] == 5  # the plan is of the whole run, not of the calibration
    assert not (tmp_path / "new").exists()


def test_bad_options_are_one_line(tmp_path, capsys):
    from tests.conftest import one_line

    one_line(capsys, main(["plan", CONFIG, "--calibrate", "0"]), "--calibrate")
    one_line(capsys, main(["plan", CONFIG, "--from", str(tmp_path / "nope")]), "--from")


def test_the_report_shows_planned_against_actual(tmp_path):
    from cai_pipeline.report.build import build_document

    run(tmp_path / "run")
    doc, _ = build_document(tmp_path / "run")
    rows = {r["stage"]: r for r in doc["plan"]}
    assert rows["revise"]["planned"]["requests"] == rows["revise"]["actual"]["requests"] == 5 * 3 * 2 * 2
