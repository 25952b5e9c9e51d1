"""`cai iterate` without a model: the derived round configs (folders, models, prompt slices, seeds, the SL
and RL recipes), the gate on hand-made audit summaries, the best round, the record, and the CLI's errors.
The real-model run and its resume after kill -9 are in test_iterate_real.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cai_pipeline.audit.summary import AuditSummary
from cai_pipeline.cli import main
from cai_pipeline.config import load_config
from cai_pipeline.errors import UserError
from cai_pipeline.inputs import load_prompts
from cai_pipeline.iterate import (
    base_audit_config,
    best_round,
    gate,
    plan,
    round_config,
    round_line,
    run_iterate,
)
from tests.conftest import REPO, later_wins

PAPER = REPO / "configs" / "cai-paper.yaml"


def top(tmp_path: Path, *overrides: str):
    return load_config(PAPER, later_wins(f"out_dir={tmp_path / 'it'}", *overrides))


def rounds_of(cfg, sl="SL"):
    """Every round's config, each from the previous one's checkpoint."""
    out, previous, sl_model = [], cfg.model, None
    for index, kind in plan(cfg):
        rcfg = round_config(cfg, index, kind, previous, sl_model)
        out.append(rcfg)
        previous = str(Path(rcfg.out_dir) / "checkpoint")
        sl_model = sl_model or previous
    return out


def test_round_folders_models_and_baselines(tmp_path):
    cfg = top(tmp_path, "iterate.rounds=2")
    sl, rl1, rl2 = rounds_of(cfg)
    assert [Path(r.out_dir) for r in (sl, rl1, rl2)] == [tmp_path / "it" / "rounds" / n for n in ("00-sl", "01-rl", "02-rl")]
    # round 0 starts from the config's model and is audited against it; each RL round from the round before
    assert sl.model == cfg.model and sl.audit.baseline == cfg.model
    assert rl1.model == str(Path(sl.out_dir) / "checkpoint") == rl1.audit.baseline
    assert rl2.model == str(Path(rl1.out_dir) / "checkpoint") == rl2.audit.baseline
    assert all(r.audit.model is None and r.train.model is None for r in (sl, rl1, rl2))  # the round's checkpoint
    # one judge for every round: the base model, not the policy being judged
    assert {r.judge.model for r in (sl, rl1, rl2)} == {cfg.model}


def test_the_audit_against_the_base_uses_the_round_s_audit_prompts(tmp_path):
    cfg = top(tmp_path, "audit.limit=24")
    _, rl1, _ = rounds_of(cfg)
    b = base_audit_config(cfg, rl1)
    assert Path(b.out_dir) == tmp_path / "it" / "vs-base" / "01-rl" and b.stages == ["audit"]
    assert (b.audit.model, b.audit.baseline) == (str(Path(rl1.out_dir) / "checkpoint"), cfg.model)
    # the round's own audit picked (and limited) the prompts: the same ones, held-out included, none re-limited
    assert b.audit.prompts == rl1.out_dir and b.audit.limit is None


def test_sl_and_rl_recipes(tmp_path):
    cfg = top(tmp_path, "sample.n=1", "train.loss=sft")
    sl, rl1, _ = rounds_of(cfg)
    assert sl.stages == ["sample", "revise", "export", "train", "audit"] and sl.train.loss == "sft"
    assert sl.train.reference_model is None
    assert rl1.stages == ["sample", "pairs", "judge", "export", "train", "audit"]
    assert rl1.train.loss == "dpo"  # an RL round trains on preferences even when the top config says sft
    assert rl1.sample.n == 2 and rl1.pairs.sampled and not rl1.pairs.revision


def test_reference_previous_or_sl(tmp_path):
    _, rl1, rl2 = rounds_of(top(tmp_path, "iterate.reference=previous"))
    assert rl1.train.reference_model is None and rl2.train.reference_model is None  # the policy's start
    sl, rl1, rl2 = rounds_of(top(tmp_path, "iterate.reference=sl"))
    assert rl1.train.reference_model == rl2.train.reference_model == str(Path(sl.out_dir) / "checkpoint")
    # a loss without a reference model gets none
    _, rl1, _ = rounds_of(top(tmp_path, "iterate.reference=sl", "train.loss=simpo", "train.use_soft_labels=false"))
    assert rl1.train.reference_model is None


def test_prompt_slices_are_disjoint_and_cover_the_prompts(tmp_path):
    cfg = top(tmp_path, "prompts.limit=30", "iterate.rounds=2")
    ids = []
    for r in rounds_of(cfg):
        assert (r.prompts.part, r.prompts.parts) == (int(Path(r.out_dir).name[:2]), 3)
        assert r.seed == cfg.seed
        ids.append({p["prompt_id"] for p in load_prompts(None, limit=30, part=r.prompts.part, parts=3).rows})
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 30


def test_reseed_keeps_the_prompts_and_draws_a_new_seed_each_round(tmp_path):
    cfg = top(tmp_path, "iterate.prompts=reseed", "iterate.rounds=2", "seed=7")
    seeds = [r.seed for r in rounds_of(cfg)]
    assert seeds[0] == 7 and len(set(seeds)) == 3
    assert all(r.prompts.part is None for r in rounds_of(cfg))
    assert [r.seed for r in rounds_of(cfg)] == seeds  # derived, not drawn: the same every time


def summary(**overall) -> AuditSummary:
    """A whole audit summary whose overall numbers are these (the rest filled in plausibly)."""
    score = {"win_rate": 0.6, "ci_low": 0.5, "ci_high": 0.7, "share_won": 0.6, "consistency": 0.8, "n": 40}
    base = {**score, "lc_win_rate": 0.62, "lc_ci_low": 0.55, "lc_ci_high": 0.69, "mean_length_model": 105.0,
            "mean_length_baseline": 100.0, "mean_length_change": 5.0, "n_prompts": 20, "refusal_rate_model": 0.1,
            "refusal_rate_baseline": 0.1}
    return AuditSummary.model_validate({"principles": {}, "overall": {**base, **overall},
                                        "settings": {"n": 2, "bootstrap": 1000, "confidence": 0.95,
                                                     "layout": "question_first"}})


def test_gate_passes_a_clear_win_within_the_length_budget():
    g = gate(summary(), 0.10)
    assert g["passed"] and g["length_growth"] == pytest.approx(0.05)
    assert (g["lc_win_rate"], g["lc_ci_low"], g["lc_ci_high"]) == (0.62, 0.55, 0.69)


def test_gate_stops_when_the_interval_straddles_one_half():
    g = gate(summary(lc_win_rate=0.56, lc_ci_low=0.49, lc_ci_high=0.63), 0.10)
    assert not g["passed"] and "not above 0.5" in g["reason"]
    assert not gate(summary(lc_ci_low=0.5), 0.10)["passed"]  # "above", not "at"


def test_gate_stops_on_length_growth():
    g = gate(summary(mean_length_model=111.0), 0.10)
    assert not g["passed"] and "+11.0%" in g["reason"] and g["length_growth"] == pytest.approx(0.11)
    assert gate(summary(mean_length_model=111.0), 0.2)["passed"]


@pytest.mark.parametrize("overall", [{"lc_ci_low": None}, {"mean_length_model": None}, {"mean_length_baseline": 0}])
def test_gate_stops_on_missing_numbers(overall):
    g = gate(summary(**overall), 0.10)
    assert not g["passed"] and "lacks" in g["reason"] and g["length_growth"] is None


def test_gate_stops_without_a_summary():
    assert not gate(None, 0.1)["passed"]
    assert not gate(summary(lc_win_rate=None, lc_ci_low=None, lc_ci_high=None), 0.1)["passed"]


def entry(name, kind, passed=None):
    return {"name": name, "kind": kind, "status": "done", "model": f"{name}/checkpoint", "baseline": "b",
            "audit": None, "gate": None if passed is None else {"passed": passed, "reason": "r"}}


def test_best_round_is_the_last_that_passed_else_sl():
    assert best_round([entry("00-sl", "sl"), entry("01-rl", "rl", True), entry("02-rl", "rl", False)])["name"] == "01-rl"
    assert best_round([entry("00-sl", "sl"), entry("01-rl", "rl", False)])["name"] == "00-sl"
    assert best_round([entry("00-sl", "sl"), entry("01-rl", "rl")])["name"] == "01-rl"  # gate off
    running = {**entry("00-sl", "sl"), "status": "running"}
    assert best_round([running]) is None


def test_round_line_without_audit_numbers():
    line = round_line(entry("01-rl", "rl", False))
    assert line.startswith("01-rl: LC win rate — [—, —]") and "gate: stop (r)" in line


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["iterate", str(PAPER), f"out_dir={tmp_path / 'x'}", "iterate.round=2"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'iterate.round'" in err and "did you mean 'iterate.rounds'" in err
    assert main(["iterate", "--no-report", str(PAPER), "iterate.rounds=0", "--verbose", f"out_dir={tmp_path / 'x'}"]) == 2
    assert "iterate.rounds" in capsys.readouterr().err
    assert main(["iterate", str(PAPER), f"out_dir={tmp_path / 'x'}", "prompts.part=1", "prompts.parts=3"]) == 2
    assert "iterate.prompts=reseed" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not a cai-pipeline run"):
        run_iterate(load_config(PAPER, [f"out_dir={tmp_path / 'mine'}"]))
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_the_paper_config_is_the_papers_recipe():
    cfg = load_config(PAPER)
    assert cfg.revise.rounds == 4 and cfg.iterate.rounds == 2 and cfg.sample.n >= 2
    assert cfg.train.loss == "dpo" and cfg.train.use_soft_labels
    assert json.loads(json.dumps(cfg.model_dump()))  # plain data: it goes into iterate.json


def test_compare_shows_the_rounds_of_an_iterate_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # rich wraps the table to the terminal's width
    out = tmp_path / "it"
    (out / "rounds").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({"package": "cai-pipeline", "stages": {}}))
    audit = {"lc_win_rate": 0.52, "lc_ci_low": 0.45, "lc_ci_high": 0.6, "mean_length_model": 110.0,
             "mean_length_baseline": 100.0, "refusal_rate_model": 0.1, "refusal_rate_baseline": 0.2,
             "principles": {"violence": {"win_rate": 0.55, "lc_win_rate": 0.5}}}
    later = {**audit, "principles": {"violence": {"win_rate": 0.4}, "privacy": {"win_rate": 0.625}}}
    without_principles = {k: v for k, v in audit.items() if k != "principles"}
    rounds = [{**entry("00-sl", "sl"), "audit": audit},
              {**entry("01-rl", "rl", False), "audit": later, "gate": gate(summary(**without_principles), 0.1)}]
    (out / "iterate.json").write_text(json.dumps({"rounds": rounds}))
    assert main(["compare", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "00-sl" in shown and "01-rl" in shown and "52.0 [45.0, 60.0]" in shown and "+10.0%" in shown
    # principles down, rounds across: a principle a round did not audit shows a dash, not a number
    assert re.search(r"violence\s*│\s*55\.0\s*│\s*40\.0", shown)
    assert re.search(r"privacy\s*│\s*—\s*│\s*62\.5", shown)
    assert "gate after 01-rl: length-controlled win rate 0.520 [0.450, 0.600]: its CI is not above 0.5" in shown
    (out / "iterate.json").unlink()
    assert main(["compare", str(out)]) == 2 and "no rounds" in capsys.readouterr().err


def test_a_round_without_prompts_is_refused_before_anything_runs(tmp_path):
    cfg = top(tmp_path, "prompts.limit=2", "iterate.rounds=2")  # three slices of two prompts: one is empty
    with pytest.raises(UserError, match="prompts.part: part . of 3 holds none"):
        run_iterate(cfg)
    assert not Path(cfg.out_dir).exists()


def test_scale_settings_pass_through_to_every_round(tmp_path):
    cfg = top(tmp_path, "executor.kind=ray", "executor.actors=2", "train.nproc=2", "engine.kind=hf")
    for r in rounds_of(cfg):
        assert (r.executor.kind, r.executor.actors, r.train.nproc, r.engine.kind) == ("ray", 2, 2, "hf")


def fake_pipeline(summaries: dict[str, AuditSummary], calls: list[str]):
    """Stands in for run_pipeline: a round 'trains' (a checkpoint/config.json) and 'audits' (the hand-made
    summary of its folder's name), so the record, the gate and the stop are tested without a model."""
    from cai_pipeline.store import RunLayout, atomic_write_json, atomic_write_text

    def run(rcfg, **_):
        layout = RunLayout(rcfg.out_dir)
        calls.append(f"{layout.root.parent.name}/{layout.root.name}")
        atomic_write_json(layout.checkpoint / "config.json", {})
        atomic_write_text(layout.audit_summary, summaries.get(layout.root.name, summary()).to_json())
        return {}

    return run


def test_the_record_follows_the_gate_and_a_rerun_does_nothing_new(tmp_path, monkeypatch):
    import cai_pipeline.pipeline

    calls: list[str] = []
    failing = summary(mean_length_model=130.0)  # +30% length: the gate stops
    monkeypatch.setattr(cai_pipeline.pipeline, "run_pipeline", fake_pipeline({"02-rl": failing}, calls))
    cfg = top(tmp_path, "iterate.rounds=3", "prompts.limit=40")
    lines: list[str] = []
    record = run_iterate(cfg, report=False, echo=lines.append)
    assert calls == ["rounds/00-sl", "rounds/01-rl", "vs-base/01-rl", "rounds/02-rl", "vs-base/02-rl"]  # no 03-rl
    assert [(r["name"], r["status"], r["gate"] and r["gate"]["passed"]) for r in record["rounds"]] == [
        ("00-sl", "done", None), ("01-rl", "done", True), ("02-rl", "done", False)]
    rounds = Path(cfg.out_dir) / "rounds"
    assert record["best"] == {"round": "01-rl", "model": str(rounds / "01-rl" / "checkpoint")}
    assert record["stopped"]["round"] == "02-rl" and "+30.0%" in record["stopped"]["reason"]
    assert record["rounds"][2]["started_from"] == record["rounds"][2]["baseline"] == str(rounds / "01-rl" / "checkpoint")
    assert record["rounds"][1]["audit_vs_base"]["lc_win_rate"] == 0.62
    assert [line.split(":")[0] for line in lines] == ["00-sl", "01-rl", "02-rl"]
    on_disk = json.loads((Path(cfg.out_dir) / "iterate.json").read_text())
    assert on_disk["status"] == "stopped" and on_disk["best"] == record["best"] and on_disk["rounds"] == record["rounds"]
    # the same command again: the same rounds re-checked (each a no-op in run_pipeline), the same stop
    calls.clear()
    again = run_iterate(cfg, report=False, echo=lambda _: None)
    assert calls == ["rounds/00-sl", "rounds/01-rl", "vs-base/01-rl", "rounds/02-rl", "vs-base/02-rl"]
    assert {k: v for k, v in again.items() if k != "updated"} == {k: v for k, v in record.items() if k != "updated"}


def test_without_the_gate_every_round_runs_and_the_last_is_best(tmp_path, monkeypatch):
    import cai_pipeline.pipeline

    calls: list[str] = []
    failing = summary(lc_ci_low=0.3)
    monkeypatch.setattr(cai_pipeline.pipeline, "run_pipeline", fake_pipeline({"01-rl": failing}, calls))
    cfg = top(tmp_path, "iterate.rounds=2", "iterate.gate=false", "iterate.audit_base=false", "prompts.limit=40")
    record = run_iterate(cfg, report=False, echo=lambda _: None)
    assert calls == ["rounds/00-sl", "rounds/01-rl", "rounds/02-rl"]
    assert record["status"] == "done" and record["stopped"] is None and record["best"]["round"] == "02-rl"
    assert all(r["gate"] is None and r["audit_vs_base"] is None for r in record["rounds"])
