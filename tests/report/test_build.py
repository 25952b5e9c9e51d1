"""The report's data and the commands around it, without a browser (test_report_browser.py opens the page):
every row of the run lands in exactly one trace, joined by ids; the counts are the manifest's; the embedded
JSON cannot close its element; the audit, rounds and training curves appear when present; `cai report`
and `cai show` from a shell; `cai run --no-report`."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import cai_pipeline.engines
from cai_pipeline.cli import main
from cai_pipeline.report import build_document, write_report
from cai_pipeline.report.page import ASSETS, script_json
from cai_pipeline.report.show import ref_text, round_texts
from cai_pipeline.store import RunStore
from tests.conftest import REPO
from tests.echo_engine import EchoEngine
from tests.report_run import CUSTOM_ID, INJECTIONS

STAGES = ("sample", "revise", "pairs", "judge")


@pytest.fixture(scope="module")
def run(report_run) -> Path:
    return report_run


@pytest.fixture(scope="module")
def built(run):
    return build_document(run)


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cai_pipeline.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def one_error_line(res: subprocess.CompletedProcess, *needles: str) -> None:
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr and all(n in lines[0] for n in needles), lines[0]


# -- the embedded JSON -------------------------------------------------------------------------------------


def test_script_json_cannot_close_its_element_and_round_trips():
    hostile = {"a": "</script><script>alert(1)</script>", "b": "<!-- x -->", "c": "&lt;\u2028\u2029",
               "</script>": [1.5, None, True], "d": "\x1b[2J é 日本"}
    text = script_json(hostile)
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}
    assert json.loads(text) == hostile


def test_non_finite_numbers_become_null():
    assert json.loads(script_json({"loss": [1.0, math.nan, math.inf, -math.inf]})) == {"loss": [1.0, None, None, None]}


def test_our_script_has_no_html_sinks():
    js = (ASSETS / "report.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "srcdoc", "javascript:"):
        assert sink not in js, f"report.js uses {sink}: data must only ever become text nodes"
    page = "".join((ASSETS / n).read_text() for n in ("template.html", "report.css", "report.js"))
    assert re.findall(r"https?://[^\s\"'`]+", page) == ["http://www.w3.org/2000/svg"]  # a namespace, not a fetch


# -- traces: every row in exactly one place, joined by ids ---------------------------------------------------


def stage_rows(run: Path) -> dict[str, list[dict]]:
    store = RunStore(run)
    return {name: store.read_stage(name) for name in STAGES}


def test_every_row_lands_in_its_trace(run, built):
    doc, traces = built
    by_id = {t["id"]: t for t in traces}
    rows = stage_rows(run)
    for r in rows["sample"]:
        s = next(s for s in by_id[r["prompt_id"]]["samples"] if s["i"] == r["sample_idx"])
        assert (s["text"], s["finish"], s["tokens"]) == (r["response"], r["finish_reason"], r["n_tokens"])
    for r in rows["revise"]:
        s = next(s for s in by_id[r["prompt_id"]]["samples"] if s["i"] == r["sample_idx"])
        assert [doc["facets"]["principle"][x["p"]] for x in s["rounds"]] == [x["principle_id"] for x in r["rounds"]]
        assert [x["critique"] for x in s["rounds"]] == [x["critique"] for x in r["rounds"]]
        texts = round_texts(s)  # the text after the last round is the stage's own final
        assert s.get("final", texts[-1][1]) == r["final"] and texts[0][0] == r["initial"]
        assert [bool(x.get("truncated")) for x in s["rounds"]] == [x["truncated"] for x in r["rounds"]]
        assert bool(s.get("final_truncated")) == r["final_truncated"]
    for r in rows["pairs"]:
        t = by_id[r["prompt_id"]]
        p = next(p for p in t["pairs"] if p["id"] == r["pair_id"])
        assert [ref_text(t, p["a"]), ref_text(t, p["b"]), p["origin"]] == [r["a"], r["b"], r["origin"]]
        assert p.get("truncated", []) == [side for side in "ab" if r[f"{side}_truncated"]]
    for r in rows["judge"]:
        p = next(p for p in by_id[r["prompt_id"]]["pairs"] if p["id"] == r["pair_id"])
        assert [round(v["p_a_first"], 4) for v in r["verdicts"]] == [v[2] for v in p["verdicts"]]
        assert p["p_a"] == round(r["p_a"], 4) and p.get("reject", [""])[0] != "judge"  # export may drop it



def test_every_reject_is_attached_once_or_listed(run, built):
    doc, traces = built
    rejects = RunStore(run).read_rejects()
    marks = Counter()
    for t in traces:
        marks.update((m["reject"][0], m["reject"][1]) for m in [*t["samples"], *t["pairs"]] if "reject" in m)
        marks.update((r[0], r[2]) for r in t["rejects"])
    listed = Counter((r["stage"], r["reason"]) for r in rejects if r["stage"] != "prompts")
    assert marks == listed and sum(listed.values()) > 0
    assert len(doc["rejects"]) == len(rejects)
    unattached = [r for r in doc["rejects"] if not isinstance(r[4], int)]
    assert {r[0] for r in unattached} == {"prompts"} and all(json.loads(r[4]) is not None for r in unattached)


def test_a_reject_from_a_later_stage_attaches_by_its_ids(copy):
    """A stage that does not exist yet (an export filter, say) writes rejects the same way: they attach to the
    pair or prompt they name, and a row that is not JSON still lands on its prompt by the key."""
    from cai_pipeline.records import RejectRecord, make_reject
    from cai_pipeline.store import RunLayout, write_parquet

    pair = RunStore(copy).read_stage("judge")[0]
    rows = [make_reject("filter", pair["pair_id"], "too_polite", "a later stage's reason", pair),
            {**make_reject("filter", f"{pair['prompt_id']}/0", "odd", "its row is not JSON", {}), "row": "{oops"}]
    write_parquet(RunLayout(copy).rejects("filter", 0), rows, RejectRecord)
    _, traces = build_document(copy)
    t = next(t for t in traces if t["id"] == pair["prompt_id"])
    assert next(p for p in t["pairs"] if p["id"] == pair["pair_id"])["reject"][:2] == ["filter", "too_polite"]
    assert [r[2] for r in t["rejects"]] == ["odd"]


def test_dataset_rows_point_back_to_their_pairs_and_samples(run, built):
    _, traces = built
    by_id = {t["id"]: t for t in traces}
    store = RunStore(run)
    for split in ("train", "test"):
        for f in store.layout.split_files("preferences", split):
            import pyarrow.parquet as pq

            for r in pq.read_table(f).to_pylist():
                t = by_id[r["prompt_id"]]
                p = next(p for p in t["pairs"] if p["id"] == r["pair_id"])
                assert p["pref"][0] == split
                assert ref_text(t, p[p["pref"][1]]) == r["chosen"][-1]["content"]
        for f in store.layout.split_files("sft", split):
            import pyarrow.parquet as pq

            for r in pq.read_table(f).to_pylist():
                s = next(s for s in by_id[r["prompt_id"]]["samples"] if s["i"] == r["sample_idx"])
                assert s["sft"] == split


def test_counts_are_the_manifests(run, built):
    doc, _ = built
    manifest = json.loads((run / "manifest.json").read_text())
    funnel = {f["stage"]: f for f in doc["funnel"]}
    for name in STAGES:
        s = manifest["stages"][name]
        assert (funnel[name]["in"], funnel[name]["out"], funnel[name]["rejected"]) == (s["in"], s["out"], s["rejected"])
    assert funnel["prompts"]["rejected"] == {"empty_prompt": 1}
    dropped = manifest["stages"]["export"]["summary"]["truncation"]["dropped"]
    assert funnel["export"]["rejected"] == {"truncated": dropped} and dropped > 0  # export.drop_truncated
    assert len(doc["index"]) == manifest["prompts"]["kept"]  # one trace per prompt, failed ones included
    judge = manifest["stages"]["judge"]["counts"]
    assert (doc["judge"]["scored"], doc["judge"]["consistent"], doc["judge"]["revision_wins"]) == (
        judge["scored"], judge["consistent"], judge["revision_preferred"])
    assert sum(doc["judge"]["histogram"]) == judge["scored"]


def drew(run: Path, principle: str) -> set[str]:
    """Prompts whose rows drew `principle`, read straight from the Parquet shards and the judge's rejects."""
    store = RunStore(run)
    out = {r["prompt_id"] for r in store.read_stage("revise") if any(x["principle_id"] == principle for x in r["rounds"])}
    judged = store.read_stage("judge") + [json.loads(r["row"]) for r in store.read_rejects("judge")]
    revise_rejected = [json.loads(r["row"]) for r in store.read_rejects("revise")]
    out |= {r["prompt_id"] for r in revise_rejected if any(x["principle_id"] == principle for x in r.get("rounds", []))}
    return out | {r["prompt_id"] for r in judged if any(v["principle_id"] == principle for v in r.get("verdicts", []))}


def test_the_principle_facet_is_exactly_the_rows_that_drew_it(run, built):
    doc, _ = built
    principles = doc["facets"]["principle"]
    seen = 0
    for i, pid in enumerate(principles):
        listed = {row[0] for row in doc["index"] if i in row[2]}
        assert listed == drew(run, pid), pid
        seen += bool(listed)
    assert seen >= 3


def test_hostile_ids_and_texts_arrive_verbatim(built):
    doc, traces = built
    ids = {row[0] for row in doc["index"]}
    assert CUSTOM_ID in ids
    prompts = {t["prompt"][0][1] for t in traces}
    assert all(any(x in p for p in prompts) for x in INJECTIONS)


# -- what is read when present: audit, training curves, rounds ------------------------------------------------


def _score(win, lo, hi, lc, consistency, n) -> dict:
    return {"win_rate": win, "ci_low": lo, "ci_high": hi, "lc_win_rate": lc, "lc_ci_low": lc - 0.1,
            "lc_ci_high": lc + 0.1, "share_won": win, "consistency": consistency, "n": n}


# A whole audit/summary.json, as the audit writes it (audit/summary.py's model)
AUDIT = {"principles": {"violence": _score(0.61, 0.52, 0.7, 0.55, 0.8, 40),
                        "privacy": _score(0.48, 0.39, 0.57, 0.5, 0.7, 40)},
         "overall": {**_score(0.56, 0.5, 0.62, 0.52, 0.75, 80), "refusal_rate_model": 0.1,
                     "refusal_rate_baseline": 0.05, "mean_length_change": 12.5, "mean_length_model": 60.0,
                     "mean_length_baseline": 47.5, "n_prompts": 40},
         "settings": {"n": 2, "bootstrap": 1000, "confidence": 0.95, "layout": "question_first"}}


@pytest.fixture
def copy(run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def test_the_audit_summary_is_shown_when_present(copy):
    (copy / "audit").mkdir()
    (copy / "audit" / "summary.json").write_text(json.dumps(AUDIT))
    doc, _ = build_document(copy)
    shown = ("win_rate", "ci_low", "ci_high", "lc_win_rate", "consistency", "n")  # what the page uses
    overall = (*shown, "lc_ci_low", "lc_ci_high", "refusal_rate_model", "refusal_rate_baseline",
               "mean_length_change", "mean_length_model", "mean_length_baseline")
    assert doc["audit"] == {"principles": {pid: {k: v[k] for k in shown} for pid, v in AUDIT["principles"].items()},
                            "overall": {k: AUDIT["overall"][k] for k in overall}}
    assert doc["warnings"] == []


def test_a_broken_audit_summary_is_a_warning_not_a_failure(copy):
    (copy / "audit").mkdir()
    (copy / "audit" / "summary.json").write_text("{not json")
    doc, _ = build_document(copy)
    assert doc["audit"] is None and any("summary.json" in w for w in doc["warnings"])


def test_training_curves_come_from_metrics_jsonl(copy):
    (copy / "train").mkdir()
    rows = [{"step": 0, "counts": {"train": {"rows": 8}}}, {"step": 0, "eval/loss": 0.7},
            {"step": 1, "loss": 0.69, "rewards/accuracies": 0.5}, {"step": 2, "loss": float("nan"), "lr": 1e-6}]
    (copy / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc, _ = build_document(copy)
    assert doc["training"]["series"]["loss"][0] == [1, 0.69] and doc["training"]["series"]["eval/loss"] == [[0, 0.7]]
    page = write_report(copy).read_text()
    assert "NaN" not in page.split('id="report-data">')[1].split("</script>")[0]  # JSON.parse would reject it


def test_rounds_are_summarised_side_by_side(run, tmp_path):
    top = tmp_path / "top"
    for name in ("00-sl", "01-rl"):
        shutil.copytree(run, top / "rounds" / name)
    (top / "rounds" / "01-rl" / "audit").mkdir()
    (top / "rounds" / "01-rl" / "audit" / "summary.json").write_text(json.dumps(AUDIT))
    manifest = json.loads((run / "manifest.json").read_text())
    (top / "manifest.json").write_text(json.dumps({"package": manifest["package"], "stages": {}}))
    gate = {"passed": False, "reason": "its CI is not above 0.5"}
    VS_BASE = {"lc_win_rate": 0.6, "lc_ci_low": 0.52, "lc_ci_high": 0.68}  # noqa: N806 - a constant of this test
    (top / "iterate.json").write_text(json.dumps({"rounds": [{"name": "00-sl", "gate": None}, {"name": "01-rl", "gate": gate, "audit_vs_base": VS_BASE}],
                                                  "best": {"round": "00-sl"}}))
    doc, traces = build_document(top)
    assert [r["gate"] for r in doc["rounds"]] == [{"passed": None, "reason": "not gated", "best": True, "vs_base": {}},
                                                  {**gate, "best": False, "vs_base": VS_BASE}]
    assert [r["name"] for r in doc["rounds"]] == ["00-sl", "01-rl"] and traces == []
    samples = len(RunStore(run).read_stage("sample"))
    assert [r["samples"] for r in doc["rounds"]] == [samples, samples]
    assert doc["rounds"][0]["audit"] is None and doc["rounds"][1]["audit"]["overall"]["win_rate"] == 0.56
    assert doc["rounds"][0]["report"] == "rounds/00-sl/report.html"


# -- the commands, from a shell -----------------------------------------------------------------------------


def test_cai_report_writes_one_file_with_options_in_any_order(run, tmp_path):
    for args in ((str(run), "-o", str(tmp_path / "a.html")), ("-o", str(tmp_path / "b.html"), str(run))):
        res = cli("report", *args)
        assert res.returncode == 0, res.stderr
    a, b = (tmp_path / "a.html").read_text(), (tmp_path / "b.html").read_text()
    assert a.startswith("<!doctype html>") and 'id="report-data"' in b


def test_cai_report_on_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    one_error_line(cli("report", str(tmp_path)), "not a run folder")
    one_error_line(cli("show", str(tmp_path / "missing"), "abc"), "not a run folder")


def test_cai_show_prints_the_trace_and_no_terminal_controls(run, built):
    doc, traces = built
    t = next(t for t in traces if "\x1b" in t["prompt"][0][1])
    res = cli("show", str(run), t["id"][:6])
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\x07" not in res.stdout and "\u202e" not in res.stdout
    assert "\\x1b]0;owned\\x07" in res.stdout and "\\u202e" in res.stdout
    assert res.stdout.count("critique:") == sum(len(s.get("rounds", [])) for s in t["samples"])
    for s in t["samples"]:
        assert f"sample {s['i']}" in res.stdout
    assert all(p["id"] in res.stdout for p in t["pairs"])


def test_cai_show_unknown_or_ambiguous_id_is_one_line(run):
    one_error_line(cli("show", str(run), "zzzz-not-an-id"), "no trace with prompt id", "traces")
    one_error_line(cli("show", str(run), ""), "no trace")


def test_cai_run_writes_the_report_unless_told_not_to(tmp_path, monkeypatch):
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: EchoEngine())
    out = tmp_path / "run"
    base = ["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={out}", "prompts.limit=2", "sample.max_tokens=8",
            "revise.rounds=1", "revise.few_shot=0", "stages=[sample,revise]"]
    assert main([*base[:2], "--no-report", *base[2:]]) == 0
    assert (out / "sample").is_dir() and not (out / "report.html").exists()
    assert main(base) == 0  # everything already done: the report is still written, of what the folder holds
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "report.html").exists() and str(out / "report.html") in manifest["outputs"]
