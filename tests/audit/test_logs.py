"""Logs as an audit side (audit/logs.py): every format read to the same rows, bad rows rejected with their
reason, the two sides matched by prompt with what has no partner counted; then `cai audit` on logs with a
stand-in judge that plants violations (exact counts), drift that flags a planted rise and not noise."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from cai_pipeline.audit.logs import log_prompts, match, read_log
from cai_pipeline.errors import UserError
from tests.report.test_browser import browser  # noqa: F401  (the fixture)

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "How do I boil an egg?"}
REPLY = "Put it in boiling water for nine minutes."
HH = "\n\nHuman: How do I boil an egg?\n\nAssistant: " + REPLY


def _openai(messages, *replies, usage=None):
    choices = [{"index": i, "message": {"role": "assistant", "content": r}, "finish_reason": "stop"}
               for i, r in enumerate(replies)]
    response = {"id": "chatcmpl-1", "object": "chat.completion", "model": "served-v2", "choices": choices}
    if usage is not None:
        response["usage"] = {"completion_tokens": usage}
    return {"request": {"model": "served-v2", "messages": messages}, "response": response}


FORMATS = {
    "messages": {"messages": [USER, {"role": "assistant", "content": REPLY}]},
    "prompt_response": {"prompt": USER["content"], "response": REPLY},
    "messages_response": {"messages": [USER], "response": REPLY},
    "openai": _openai([USER], REPLY),
    "openai_batch": {"custom_id": "r1", "request": {"body": {"messages": [USER]}},
                     "response": {"status_code": 200, "body": _openai([USER], REPLY)["response"]}},
    "trl_conversational": {"prompt": [USER], "completion": [{"role": "assistant", "content": REPLY}]},
    "trl_standard": {"prompt": USER["content"], "completion": REPLY},
    "hh_rlhf": {"chosen": HH, "rejected": HH.replace("nine", "ninety")},
}


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    elif path.suffix == ".csv":
        pd.DataFrame([{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()}
                      for r in rows]).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_log_format_reads_to_the_same_row(tmp_path, fmt):
    rows, rejects = read_log(str(write(tmp_path / "log.jsonl", [FORMATS[fmt]])), "audit.responses")
    assert rejects == [] and len(rows) == 1
    row = rows[0]
    assert (row.prompt, row.response, row.sample_idx, row.tag) == ([USER], REPLY, 0, "untagged")
    reference, _ = read_log(str(write(tmp_path / "ref.jsonl", [FORMATS["prompt_response"]])), "audit.responses")
    assert row.prompt_id == reference[0].prompt_id  # the same prompt: the same key, whatever the format


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_parquet_and_csv_logs_read_like_jsonl(tmp_path, suffix):
    rows = [{"messages": [SYSTEM, USER, {"role": "assistant", "content": f"reply {i}"}], "tag": "benign"}
            for i in range(3)]
    got, rejects = read_log(str(write(tmp_path / f"log{suffix}", rows)), "audit.responses")
    want, _ = read_log(str(write(tmp_path / "log.jsonl", rows)), "audit.responses")
    assert rejects == [] and [replace(r, model="") for r in got] == [replace(r, model="") for r in want]
    # three responses to one prompt: numbered in file order, one prompt
    assert [r.sample_idx for r in got] == [0, 1, 2] and len(log_prompts([r.as_dict() for r in got])) == 1
    assert got[0].prompt == [SYSTEM, USER] and got[0].tag == "benign"


def test_several_choices_are_several_responses_with_their_lengths(tmp_path):
    rows, _ = read_log(str(write(tmp_path / "log.jsonl", [_openai([USER], "a b", "c d e"),
                                                          _openai([USER], "only one", usage=7)])), "x")
    assert [(r.response, r.sample_idx, r.n_tokens, r.length_unit, r.model) for r in rows] == [
        ("a b", 0, 2, "words", "served-v2"), ("c d e", 1, 3, "words", "served-v2"),
        ("only one", 2, 7, "tokens", "served-v2")]


def test_bad_rows_are_rejects_with_their_reason(tmp_path):
    rows = [FORMATS["messages"], {"messages": [USER]}, {"prompt": "hi", "response": "  "}, {"foo": 1},
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"messages": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]},
            {"response": "orphan"}]
    got, rejects = read_log(str(write(tmp_path / "log.jsonl", rows)), "audit.responses")
    assert len(got) == 1
    assert [r["reason"] for r in rejects] == ["no_response", "empty_response", "unknown_format", "bad_messages",
                                              "ends_with_assistant", "no_prompt"]
    assert [r["key"] for r in rejects] == [f"log.jsonl:{i}" for i in range(2, 8)]  # the line of each


def test_a_log_with_nothing_usable_or_missing_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"audit.responses: no usable response in .*unknown|not a log row"):
        read_log(str(write(tmp_path / "log.jsonl", [{"foo": 1}])), "audit.responses")
    with pytest.raises(UserError, match=r"audit.baseline_responses: .*missing.jsonl does not exist"):
        read_log(str(tmp_path / "missing.jsonl"), "audit.baseline_responses")


def _rows(side: str, spec: dict[str, int]) -> list[dict]:
    return [{"side": side, "prompt_id": pid, "sample_idx": i, "response": f"{side} {pid} {i}"}
            for pid, n in spec.items() for i in range(n)]


def test_sides_are_matched_by_prompt_and_the_rest_is_counted():
    model = _rows("model", {"p1": 2, "p2": 1, "m-only": 2})
    baseline = _rows("baseline", {"p1": 1, "p2": 3, "b-only": 1, "b-only2": 1})
    pairs, unmatched = match(model, baseline)
    assert [(a["prompt_id"], a["sample_idx"], b["sample_idx"]) for a, b in pairs] == [("p1", 0, 0), ("p2", 0, 0)]
    assert unmatched == {"model_only_prompts": 1, "model_only_responses": 2, "model_extra_responses": 1,
                         "baseline_only_prompts": 2, "baseline_only_responses": 2, "baseline_extra_responses": 2}
    # every response is either in a pair or counted
    assert len(model) == len(pairs) + unmatched["model_only_responses"] + unmatched["model_extra_responses"]
    assert len(baseline) == len(pairs) + unmatched["baseline_only_responses"] + unmatched["baseline_extra_responses"]


# ---------------------------------------------------------------------------------------------------------
# `cai audit` on logs, with a planted judge


class PlantedViolations:
    """A judge without a model: to the compliance question it answers Yes (P = 0.99) exactly when the response
    carries the mark `[bad:<principle id>]` of the principle asked about, else No (P = 0.01); to A/B questions
    and the refusal question, ½."""

    name, model, max_model_len = "planted", "planted", 4096

    def __init__(self, principles):
        from cai_pipeline.audit.compliance import violation_question
        from cai_pipeline.engines.base import EngineStats

        self.stats, self.scored, self.generated = EngineStats(), 0, 0
        self.questions = {violation_question(p): p.id for p in principles}

    def generate(self, convs, params):
        from cai_pipeline.engines.base import Completion

        self.generated += len(convs)
        return [[Completion(f"A reply to {c[-1]['content']}", "stop", 4) for _ in range(params.n)] for c in convs]

    def choice_logprobs(self, convs, choices):
        import math
        import re

        out = []
        for conv in convs:
            text = conv[-1]["content"]
            asked = next((pid for q, pid in self.questions.items() if q in text), None)
            if choices == ["Yes", "No"] and asked:
                self.scored += 1
                response = re.search(r"Assistant's response: (.*?)\n\n", text, re.S).group(1)
                p = 0.99 if f"[bad:{asked}]" in response else 0.01
                out.append({"Yes": math.log(p), "No": math.log(1 - p)})
            else:
                out.append({c: -1.0 for c in choices})
        return out

    def count_tokens(self, conv):
        return sum(len(m["content"].split()) for m in conv)

    def close(self):
        pass


@pytest.fixture
def planted(monkeypatch, model_path):
    import cai_pipeline.engines
    from cai_pipeline.constitution import load_constitution
    from tests.conftest import REPO

    engine = PlantedViolations(load_constitution(REPO / "constitutions" / "harmless.yaml").principles)
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: engine)
    return engine


def planted_log(path: Path, n_prompts: int, marks: dict[str, int], n: int = 2, offset: int = 0) -> Path:
    """n responses to each of n_prompts prompts; the first marks[pid] responses carry [bad:pid]."""
    rows = []
    for k in range(n_prompts * n):
        marked = " ".join(f"[bad:{pid}]" for pid, count in marks.items() if k < count)
        rows.append({"prompt": f"Question {offset + k // n}: what should I do today?", "tag": "benign",
                     "response": f"Answer {k}. {marked}".strip()})
    return write(path, rows)


def audit(out: Path, *args: str) -> int:
    from cai_pipeline.cli import main
    from tests.conftest import REPO, later_wins

    return main(later_wins("audit", str(REPO / "configs" / "demo.yaml"), f"out_dir={out}", "audit.judge.model=embedded",
                           "audit.principles=[violence,privacy]", "audit.bootstrap=400", "audit.limit=null", *args))


def test_a_log_with_planted_violations_gives_the_exact_counts(planted, tmp_path, capsys):
    log = planted_log(tmp_path / "week.jsonl", 10, {"violence": 7, "privacy": 3})
    out = tmp_path / "run"
    assert audit(out, f"audit.responses={log}") == 0
    summary = json.loads((out / "audit" / "summary.json").read_text())
    c = summary["compliance"]
    assert {pid: (row["violations"], row["n"], row["violation_rate"]) for pid, row in c.items()} == {
        "violence": (7, 20, 0.35), "privacy": (3, 20, 0.15)}
    for row in c.values():
        assert {"violation_rate", "ci_low", "ci_high", "n"} <= set(row)
        assert 0 <= row["ci_low"] < row["violation_rate"] < row["ci_high"] <= 1
    assert planted.scored == 40 and planted.generated == 0  # one question per (response, principle), no pairs
    assert summary["overall"]["n"] == 0 and summary["counts"]["pairs"] == 0
    # the worst responses per principle are the marked ones, most likely first
    assert all(w["p_violation"] == 0.99 for w in summary["worst"]["privacy"][:3])
    table = pd.read_parquet(out / "audit" / "compliance.parquet")
    assert len(table) == 40 and table.groupby("principle_id")["violated"].sum().to_dict() == {"privacy": 3,
                                                                                            "violence": 7}
    readme = (out / "audit" / "README.md").read_text()
    assert "## Compliance" in readme and "| violence | 35.0 |" in readme and "7 / 20" in readme
    shown = capsys.readouterr().out
    assert "compliance" in shown and "violence" in shown
    # the report carries the rates and each likeliest violation's conversation and response
    from cai_pipeline.report.build import build_document

    document, _ = build_document(out)
    assert document["audit"]["compliance"]["violence"]["violations"] == 7
    worst = document["audit"]["worst"]["violence"][0]
    assert "[bad:violence]" in worst["response"] and worst["prompt"][0][0] == "user"


def test_two_logs_flag_a_planted_rise_and_not_noise(planted, tmp_path):
    old = planted_log(tmp_path / "old.jsonl", 20, {"violence": 2, "privacy": 10})
    new = planted_log(tmp_path / "new.jsonl", 20, {"violence": 30, "privacy": 12}, offset=100)
    out = tmp_path / "run"
    assert audit(out, f"audit.responses={new}", f"audit.baseline_responses={old}") == 0
    summary = json.loads((out / "audit" / "summary.json").read_text())
    drift = summary["drift"]
    assert drift["violence"]["rose"] and drift["violence"]["difference"] == pytest.approx(0.7)
    assert drift["violence"]["ci_low"] > 0
    assert not drift["privacy"]["rose"] and drift["privacy"]["ci_low"] < 0 < drift["privacy"]["ci_high"]
    assert summary["compliance_baseline"]["violence"]["violations"] == 2
    warnings = [w for w in summary["warnings"] if "rose" in w]
    assert len(warnings) == 1 and warnings[0].startswith("principle violence: violation rate rose")
    # two weeks share no prompt: no pair, every response counted as unmatched, none dropped
    assert summary["counts"]["unmatched"]["model_only_responses"] == 40
    assert summary["counts"]["unmatched"]["baseline_only_responses"] == 40
    readme = (out / "audit" / "README.md").read_text()
    assert "(rose)" in readme and "model only responses 40" in readme


def test_a_log_against_a_log_with_missing_and_extra_prompts(planted, tmp_path):
    a = write(tmp_path / "a.jsonl", [{"prompt": f"Q{i}?", "response": f"a{i}"} for i in (1, 2, 3, 3)])
    b = write(tmp_path / "b.jsonl", [{"prompt": f"Q{i}?", "response": f"b{i}"} for i in (2, 3, 4, 5)])
    out = tmp_path / "run"
    assert audit(out, f"audit.responses={a}", f"audit.baseline_responses={b}", "audit.compliance=false") == 0
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert summary["counts"]["pairs"] == 2 and summary["overall"]["n"] == 2
    assert summary["counts"]["unmatched"] == {"model_only_prompts": 1, "model_only_responses": 1,
                                              "model_extra_responses": 1, "baseline_only_prompts": 2,
                                              "baseline_only_responses": 2, "baseline_extra_responses": 0}
    assert summary["settings"]["length_unit"] == "words" and summary["compliance"] == {}
    responses = pd.read_parquet(out / "audit" / "responses.parquet")
    assert responses.groupby("side").size().to_dict() == {"baseline": 4, "model": 4}  # nothing dropped


def test_a_log_with_bad_rows_audits_the_rest_and_counts_them(planted, tmp_path):
    log = write(tmp_path / "log.jsonl", [{"prompt": "Q?", "response": "fine [bad:privacy]"}, {"foo": 1},
                                         {"messages": [USER]}])
    out = tmp_path / "run"
    assert audit(out, f"audit.responses={log}") == 0
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert summary["counts"]["log_rejects"] == {"unknown_format": 1, "no_response": 1}
    assert summary["compliance"]["privacy"]["violations"] == 1
    rejects = pd.read_parquet(out / "rejects" / "audit")
    assert sorted(rejects["reason"]) == ["no_response", "unknown_format"]
    assert "Log rows not read" in (out / "audit" / "README.md").read_text()


def test_log_settings_mistakes_are_one_line(planted, tmp_path, capsys):
    from tests.conftest import one_line

    log = planted_log(tmp_path / "log.jsonl", 2, {})
    one_line(capsys, audit(tmp_path / "run", f"audit.responses={tmp_path / 'nope.jsonl'}"), "audit.responses",
             "does not exist")
    one_line(capsys, audit(tmp_path / "run", f"audit.responses={log}", f"audit.prompts={log}"), "audit.prompts",
             "remove audit.prompts")
    assert not (tmp_path / "run").exists()


def test_the_report_shows_compliance_and_opens_a_violation(planted, tmp_path, browser):  # noqa: F811
    """In a real browser: the compliance table, and a likeliest violation opened to its conversation."""
    from cai_pipeline.report import write_report
    from tests.report.test_browser import Page

    log = planted_log(tmp_path / "week.jsonl", 4, {"violence": 3})
    out = tmp_path / "run"
    assert audit(out, f"audit.responses={log}", "--no-report") == 0
    page = Page(browser, write_report(out))
    try:
        view = page.open()
        rows = view.locator("#compliance tbody tr")
        assert rows.count() == 2 and "3 / 8" in rows.nth(0).inner_text()
        view.locator("summary", has_text="violence: 5 likeliest violations").click()
        item = view.locator("details.trace").first
        item.locator("summary").click()
        assert "[bad:violence]" in item.inner_text() and "Question 0" in item.inner_text()
        page.clean()
    finally:
        page.close()


def test_a_principle_s_violation_question_is_its_own_or_built_from_its_critique():
    from cai_pipeline.audit.compliance import score_violations, verdict_source, violation_question
    from cai_pipeline.constitution import Principle

    base = {"id": "p", "critique": "Find any   insult in the response.", "revision": "r", "comparison": "c",
            "rationale": "why"}
    derived = violation_question(Principle(**base))
    assert "Find any insult in the response." in derived and derived.endswith("fall short of this principle?")
    own = Principle(**base, violation="Does the response insult the user?")
    assert violation_question(own) == "Does the response insult the user?" and verdict_source(own) == "judge"
    assert score_violations(None, [], None) == []


def test_the_docs_example_of_served_request_logs_audits_as_it_is(planted, tmp_path):
    from tests.conftest import REPO

    example = REPO / "docs" / "examples" / "served-requests.jsonl"
    rows, rejects = read_log(str(example), "audit.responses")
    assert len(rows) == 6 and rejects == [] and {r.model for r in rows} == {"support-bot-v3"}
    assert all(r.prompt[0]["role"] == "system" and r.length_unit == "tokens" for r in rows)
    out = tmp_path / "served"
    assert audit(out, f"audit.responses={example}", "audit.principles=[privacy,harassment]") == 0
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert {pid: row["n"] for pid, row in summary["compliance"].items()} == {"privacy": 6, "harassment": 6}


def test_compare_shows_two_log_audits_violation_rates(planted, tmp_path, capsys):
    from cai_pipeline.cli import main

    for name, count in (("a", 2), ("b", 6)):
        log = planted_log(tmp_path / f"{name}.jsonl", 5, {"violence": count})
        assert audit(tmp_path / name, f"audit.responses={log}") == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    shown = capsys.readouterr().out
    assert "violation %: violence" in shown and "20.0 [" in shown and "60.0 [" in shown


def test_a_rate_of_zero_is_not_certain():
    from cai_pipeline.audit.stats import rate_interval

    got = rate_interval([False] * 12, [f"p{i // 2}" for i in range(12)], n_boot=400, confidence=0.95, seed=0)
    # the bootstrap alone says [0, 0]; six prompts without a violation bound the rate by Wilson's 0.39
    assert got["violation_rate"] == 0 and got["ci_low"] == 0 and got["ci_high"] == pytest.approx(0.3903, abs=1e-3)


@pytest.mark.parametrize("log_side", ["model", "baseline"])
def test_either_side_may_be_a_log_and_the_other_a_model(planted, tmp_path, log_side):
    log = write(tmp_path / "log.jsonl", [{"prompt": f"Q{i}?", "response": f"logged {i}", "tag": "benign"}
                                         for i in (1, 2, 2, 3)])
    key = {"model": f"audit.responses={log}", "baseline": f"audit.baseline_responses={log}"}[log_side]
    other = {"model": "audit.baseline=embedded", "baseline": "audit.model=embedded"}[log_side]
    out = tmp_path / "run"
    assert audit(out, key, other, "audit.n=2") == 0
    assert planted.generated == 3  # the model answers the log's three prompts, n = 2 each
    summary = json.loads((out / "audit" / "summary.json").read_text())
    # Q2 has two logged responses: pairs 0 and 1; Q1 and Q3 one each: the model's second answer has no partner
    assert summary["counts"]["pairs"] == 4 and summary["overall"]["n"] == 4
    assert summary["counts"]["unmatched"][f"{'baseline' if log_side == 'model' else 'model'}_extra_responses"] == 2
    responses = pd.read_parquet(out / "audit" / "responses.parquet")
    logged = responses[responses["side"] == log_side]
    assert sorted(logged["response"]) == ["logged 1", "logged 2", "logged 2", "logged 3"]
    assert set(logged["finish_reason"]) == {"logged"} and summary["models"][log_side] == str(log)
