"""The Review tab in a real browser (Debian's chromium through Playwright, as tests/report/test_browser.py):
a person labels ten verdicts blind (the judge's answer appears only after each choice), the labels survive a
reload, the export is one JSONL file, and `cai judge-eval` on it gives the κ a hand computation gives; no
network request, and model text is shown as text. Also: the stratified sample, and the Label Studio and
Argilla files (`cai report --review-files`)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cai_pipeline import cli
from cai_pipeline.report import build_document, write_report
from cai_pipeline.report.review import read_review, review_items
from tests.report.test_browser import Page, browser, until  # noqa: F401  (browser is a fixture)
from tests.report_run import INJECTIONS

CLICKS = ["A", "B", "A", "tie", "B", "A", "A", "B", "skip", "A"]


def hand_kappa(pairs: list[tuple[str, str]]) -> float:
    """Cohen's κ written out: observed agreement, chance agreement from the two sides' marginals."""
    n = len(pairs)
    observed = sum(h == j for h, j in pairs) / n
    people, judge = Counter(h for h, _ in pairs), Counter(j for _, j in pairs)
    chance = sum(people[c] / n * judge[c] / n for c in ("a", "b", "tie"))
    return (observed - chance) / (1 - chance)


@pytest.fixture
def page(browser, report_run):  # noqa: F811
    p = Page(browser, write_report(report_run))
    yield p
    p.close()


def test_label_ten_blind_export_and_judge_eval_gives_the_hand_kappa(page, report_run, tmp_path, capsys):
    p = page.open("review")
    cards = p.eval_on_selector_all(".review-item", "cs => cs.map(c => c.dataset.item)")
    assert len(cards) >= 10
    for item, click in zip(cards, CLICKS):
        card = f'.review-item[data-item="{item}"]'
        assert p.query_selector(f"{card} .reveal") is None  # blind: no answer before the choice
        p.click(f'{card} button[data-choice="{click}"]')
        assert "judge:" in p.text_content(f"{card} .reveal")
    assert p.text_content("#review-count") == f"10 of {len(cards)} labelled"
    p = page.open("review")  # a reload keeps them (localStorage)
    until(p, "() => document.querySelector('#review-count')?.dataset.n === '10'")
    with p.expect_download() as download:
        p.click("#review-export")
    export = tmp_path / download.value.suggested_filename
    download.value.save_as(export)
    assert export.name.startswith("review-") and export.suffix == ".jsonl"
    labels = read_review(export)
    assert [x.item for x in labels] == cards[:10]
    # the person's clicks, mapped through the slot each response was shown in
    for x, click in zip(labels, CLICKS):
        shown = {"A": x.shown_first, "B": "b" if x.shown_first == "a" else "a"}
        assert x.human == shown.get(click, click)
    out = tmp_path / "agreement.json"
    assert cli.main(["judge-eval", "--data", str(export), "--out", str(out)]) == 0
    judged = [(x.human, "a" if x.p_a > 0.5 else "b" if x.p_a < 0.5 else "tie") for x in labels if x.human != "skip"]
    report = json.loads(out.read_text())["agreement"]["overall"]
    assert report["n"] == 9 and report["kappa"] == pytest.approx(hand_kappa(judged), abs=1e-4)
    assert "9 labels" not in capsys.readouterr().out  # all ten lines are read, the skip counted apart
    page.clean()  # no console error and no request but the report file itself: the Blob never left the page


def test_review_cards_show_model_text_as_text(page, report_run):
    p = page.open("review")
    shown = p.text_content("#review-list")
    doc, _ = build_document(report_run)
    hostile = [x for x in INJECTIONS if any(x in it["a"] or x in it["b"] for it in doc["review"]["items"])]
    assert hostile and all(x.split("\u2028")[0] in shown for x in hostile)
    p.evaluate("document.querySelectorAll(\".review-item button[data-choice='A']\").forEach(b => b.click())")
    assert len(p.query_selector_all(".reveal")) == len(doc["review"]["items"])  # every answer revealed
    assert p.evaluate("window.__pwned") is None and p.query_selector_all("img, svg[onload]") == []
    handlers = p.evaluate("[...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
                          ".filter(n => n.startsWith('on'))")
    assert handlers == []
    page.clean()


def test_the_sample_is_stratified_and_stable(report_run):
    """Every (principle, margin) stratum gets the same share, except the ones too small for it, which are taken
    whole: the sample spreads over principles and margins instead of following where most verdicts are."""
    from cai_pipeline.report.review import scored_pairs
    from cai_pipeline.report.traces import read_rows
    from cai_pipeline.store import RunStore

    doc, _ = build_document(report_run)
    items = doc["review"]["items"]
    everything = Counter(it["stratum"] for it in review_items(scored_pairs(read_rows(RunStore(report_run))), {},
                                                              limit=10**6))
    taken = Counter(it["stratum"] for it in items)
    assert len(items) == min(60, sum(everything.values())) and len(taken) >= 3
    top = max(taken.values())
    assert all(taken[s] in (top, top - 1) or taken[s] == n for s, n in everything.items())
    assert [it["item"] for it in build_document(report_run)[0]["review"]["items"]] == [it["item"] for it in items]
    assert 0.2 < sum(it["shown_first"] == "a" for it in items) / len(items) < 0.8
    assert review_items([], {}) == []


def test_label_studio_and_argilla_files(report_run, tmp_path, capsys):
    assert cli.main(["report", str(report_run), "-o", str(tmp_path / "r.html"), "--review-files",
                     str(tmp_path / "review")]) == 0
    doc, _ = build_document(report_run)
    items = doc["review"]["items"]
    tasks = json.loads((tmp_path / "review" / "label-studio" / "tasks.json").read_text())
    config = (tmp_path / "review" / "label-studio" / "config.xml").read_text()
    assert len(tasks) == len(items) and all(set(t) == {"data"} for t in tasks)
    for var in ("$question", "$prompt", "$response_a", "$response_b"):  # every variable the config reads is in data
        assert var in config and all(var[1:] in t["data"] for t in tasks)
    records = [json.loads(line) for line in (tmp_path / "review" / "argilla" / "records.jsonl").read_text().split("\n")[:-1]]
    assert [r["id"] for r in records] == [it["item"] for it in items]
    judge = [json.loads(line) for line in (tmp_path / "review" / "judge.jsonl").read_text().split("\n")[:-1]]
    blind = json.dumps(tasks) + json.dumps(records)
    assert '"p_a' not in blind and judge[0]["p_a"] == items[0]["p_a"]  # blind: the judge's answers kept apart
    first = items[0]
    shown = first["a"] if first["shown_first"] == "a" else first["b"]
    assert tasks[0]["data"]["response_a"] == shown == records[0]["response_a"]


def test_the_judge_check_section(browser, report_run, tmp_path):  # noqa: F811
    """A run with judge-check/summary.json shows the profile in its overview, flagged probes marked."""
    import shutil

    from cai_pipeline.judge_check.summary import CheckSettings, Cost, JudgeCheckSummary, ProbeScore
    from cai_pipeline.store import RunLayout

    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    summary = JudgeCheckSummary(
        judge="stand-in", probes={"position": ProbeScore(shift=0.01, ci_low=-0.02, ci_high=0.04, n=9, flagged=False),
                                  "verbosity": ProbeScore(shift=0.2, ci_low=0.1, ci_high=0.3, n=9, flagged=True)},
        skipped={"self": "no other model's responses"},
        settings=CheckSettings(source=str(run), pairs=9, prompts=5, principles_per_pair=2, bootstrap=100,
                               confidence=0.95, threshold=0.05, seed=0, layout="question_first", reasoning=False),
        cost=Cost(seconds=1.5, judge_calls=400, failed=0))
    layout = RunLayout(run).judge_check
    layout.root.mkdir()
    layout.summary.write_text(summary.to_json())
    assert build_document(run)[0]["judge_check"] == json.loads(summary.to_json())
    page = Page(browser, write_report(run))
    try:
        p = page.open()
        rows = p.eval_on_selector_all("#judge-check tbody tr", "rs => rs.map(r => [r.dataset.probe, r.textContent])")
        assert [r[0] for r in rows] == ["position", "verbosity"]
        assert "flagged" in rows[1][1] and "flagged" not in rows[0][1]
        assert "flagged: verbosity" in p.text_content("main") and "not run: self" in p.text_content("main")
        page.clean()
    finally:
        page.close()


def test_review_files_go_only_into_a_new_empty_or_earlier_review_folder(report_run, tmp_path, capsys):
    """--review-files names a folder we fill with files of fixed names (README.md among them): a folder of
    the user's is refused, nothing in it touched; our own earlier folder is written again."""
    from tests.conftest import one_line

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "judge.jsonl").write_text("the user's file")
    one_line(capsys, cli.main(["report", str(report_run), "-o", str(tmp_path / "r.html"), "--review-files",
                               str(mine)]), "--review-files", "did not write")
    assert [p.name for p in mine.iterdir()] == ["judge.jsonl"] and (mine / "judge.jsonl").read_text() == "the user's file"
    ours = tmp_path / "review"
    for _ in range(2):  # the second time into a folder that is ours
        assert cli.main(["report", str(report_run), "-o", str(tmp_path / "r.html"), "--review-files", str(ours)]) == 0
