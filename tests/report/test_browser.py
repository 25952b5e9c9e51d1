"""The report in a real browser (Debian's chromium, driven by Playwright): it loads from file:// with no
console error and no network request, shows the manifest's counts, filters by principle to exactly the
prompts that drew it, opens a trace with its critiques (also from a permalink), lists a reject reason's rows,
and runs no script from the data. Screenshots go to outputs/test-artifacts/ (or $CAI_TEST_ARTIFACTS).

Under CI=true a missing browser or Playwright fails these tests instead of skipping them."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from cai_pipeline.report import build_document, write_report
from cai_pipeline.report.show import round_texts
from tests.conftest import REPO, missing
from tests.report.test_build import drew
from tests.report_run import CUSTOM_ID, INJECTIONS, off_the_loop

# The flags this machine's closed network needs (../.library/env/machines/python.md): without the
# background-networking ones Chromium tries to reach Google's hosts at start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("CAI_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts"))


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium is not installed (`make test` installs Debian's package: apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install 'cai-pipeline[dev]')")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def run(report_run) -> Path:
    return report_run


class Page:
    """A page with everything the tests must not see recorded: console errors, uncaught exceptions, and any
    request other than the report file itself (which is also refused)."""

    def __init__(self, browser, path: Path):
        self.url = path.resolve().as_uri()
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.split("#")[0] == self.url else self.requests.append(r.url))

    def _route(self, route):
        if route.request.url.split("#")[0] == self.url:
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def open(self, fragment: str = ""):
        self.page.goto(self.url + (f"#{fragment}" if fragment else ""))
        until(self.page, "() => window.__reportReady !== undefined")
        return self.page

    def clean(self) -> None:
        assert self.errors == [] and self.requests == [], (self.errors, self.requests)

    def close(self):
        self.context.close()


@pytest.fixture
def report(browser, run):
    page = Page(browser, write_report(run))
    yield page
    page.close()


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=name.startswith("overview"))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    return path


def until(page, predicate: str, arg=None, timeout: float = 15.0):
    """Poll `predicate(arg)` in the page until truthy. (Playwright's wait_for_function evaluates its predicate
    with eval, which the report's Content-Security-Policy rightly refuses; page.evaluate is not affected.)"""
    deadline = time.monotonic() + timeout
    while not (value := page.evaluate(predicate, arg)):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate} ({arg!r})"
        time.sleep(0.05)
    return value


def traces_shown(page) -> list[str]:
    until(page, "() => document.querySelector('#trace-count')?.dataset.shown !== undefined")
    return page.eval_on_selector_all(".trace-row", "rows => rows.map(r => r.dataset.id)")


def test_the_page_loads_offline_with_no_error_and_shows_the_manifests_counts(report, run):
    page = report.open()
    manifest = json.loads((run / "manifest.json").read_text())
    for stage in ("sample", "revise", "pairs", "judge"):
        s = manifest["stages"][stage]
        for field, want in (("in", s["in"]), ("out", s["out"]), ("rejected", sum(s["rejected"].values()))):
            assert page.text_content(f'#funnel tr[data-stage="{stage}"] td[data-field="{field}"]') == str(want)
        links = page.eval_on_selector_all(f'#funnel a.reason[data-stage="{stage}"]',
                                          "as => Object.fromEntries(as.map(a => [a.dataset.reason, +a.dataset.n]))")
        assert links == s["rejected"]
    assert page.text_content('#funnel tr[data-stage="prompts"] td[data-field="rejected"]') == "1"
    rejected = sum(manifest["prompts"]["rejected"].values()) + sum(
        sum(manifest["stages"][s]["rejected"].values()) for s in ("sample", "revise", "pairs", "judge"))
    rejected += manifest["stages"]["export"]["summary"]["truncation"]["dropped"]
    assert page.text_content('#funnel tr[data-stage="export"] td[data-field="rejected"]') == str(
        manifest["stages"]["export"]["summary"]["truncation"]["dropped"])
    tabs = page.eval_on_selector_all("#top nav a", "as => as.map(a => a.textContent)")
    review = len(build_document(run)[0]["review"]["items"])
    assert tabs == ["Overview", f"Traces ({manifest['prompts']['kept']})", f"Rejects ({rejected})", f"Review ({review})"]
    shot(page, "overview")
    report.clean()


def test_filtering_by_a_principle_shows_exactly_the_prompts_that_drew_it(report, run):
    page = report.open("traces")
    everything = traces_shown(page)
    assert len(everything) == len(set(everything)) and page.text_content("#trace-count").endswith(f"of {len(everything)} traces")
    options = page.eval_on_selector_all("#filter-principle option", "os => os.map(o => [o.value, o.textContent])")
    checked = 0
    for value, label in options[1:]:
        principle = label.rsplit(" (", 1)[0]
        page.select_option("#filter-principle", value)
        shown = traces_shown(page)
        assert set(shown) == drew(run, principle) and len(shown) == len(set(shown)), principle
        assert page.text_content("#trace-count").startswith(f"{len(shown)} of ")
        checked += 1
    assert checked >= 3
    report.clean()


def test_a_trace_opens_with_its_critiques_and_has_a_permalink(report, run):
    from cai_pipeline.store import RunStore

    revised = RunStore(run).read_stage("revise")
    target = next(r for r in revised if r["prompt_id"] != CUSTOM_ID)
    page = report.open("traces")
    traces_shown(page)
    page.click(f'.trace-row[data-id="{target["prompt_id"]}"]')
    page.wait_for_selector(f'.sample[data-sample="{target["sample_idx"]}"]')
    assert page.evaluate("location.hash") == f"#trace/{target['prompt_id']}"
    want = [x["critique"] or "(empty)" for r in revised if r["prompt_id"] == target["prompt_id"] for x in r["rounds"]]
    assert page.eval_on_selector_all("#trace-detail .critique", "cs => cs.map(c => c.textContent)") == want
    # each round's word diff reads as the text before it without its insertions, and as the text after it
    # without its deletions: true of any correct diff, whatever the texts
    sides = page.eval_on_selector_all("#trace-detail .diff", """ds => ds.map(d => [false, true].map(keepIns => {
        const c = d.cloneNode(true); c.querySelectorAll(keepIns ? 'del' : 'ins').forEach(x => x.remove());
        return c.textContent; }))""")
    doc, traces = build_document(run)
    trace = next(t for t in traces if t["id"] == target["prompt_id"])
    assert sides == [list(pair) for s in trace["samples"] for pair in round_texts(s)] and sides
    shot(page, "trace")
    # the permalink opens the same trace in a fresh page; a hostile user-given id works as a permalink too
    for pid in (target["prompt_id"], CUSTOM_ID):
        page = report.open("trace/" + quote(pid, safe=""))
        page.wait_for_selector("#trace-detail .permalink")
        assert page.text_content("#trace-detail .permalink") == pid
    report.clean()


def test_a_reject_reason_lists_exactly_its_rows(report, run):
    manifest = json.loads((run / "manifest.json").read_text())
    page = report.open()
    stage, reason = "judge", "below_margin"
    page.click(f'#funnel a.reason[data-stage="{stage}"][data-reason="{reason}"]')
    page.wait_for_selector("#reject-list")
    items = page.eval_on_selector_all("#reject-list .reject-item", "xs => xs.map(x => x.dataset.stage + ':' + x.dataset.reason)")
    assert items == [f"{stage}:{reason}"] * manifest["stages"][stage]["rejected"][reason]
    page.click("#reject-list .reject-item a")  # each attached reject links to its trace
    page.wait_for_selector("#trace-detail .pair .reject")
    report.clean()


def test_no_script_from_the_data_runs(report, run):
    page = report.open("traces")
    ids = traces_shown(page)
    for pid in ids:  # every trace opened: prompts, samples, critiques, revisions, diffs, verdicts
        page.evaluate("id => { location.hash = 'trace/' + encodeURIComponent(id); }", pid)
        until(page, "id => document.querySelector('#trace-detail .permalink')?.textContent === id", pid)
    page.fill("#search", "onerror")
    until(page, "() => document.querySelector('#trace-count').textContent.startsWith('2 of')")
    for fragment in ("rejects", "overview"):
        report.open(fragment)
    page = report.open("trace/" + quote(ids[0], safe=""))
    page.wait_for_selector("#trace-detail .permalink")
    assert page.evaluate("window.__pwned") is None
    handlers = page.evaluate("[...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))"
                             ".filter(n => n.startsWith('on'))")
    assert handlers == [] and page.query_selector_all("img") == []
    shown = page.text_content("#trace-detail")
    assert any(x in shown for x in INJECTIONS)  # shown, as text
    report.clean()


def test_audit_training_and_rounds_render(browser, run, tmp_path):
    import shutil as sh

    from tests.report.test_build import AUDIT

    top = tmp_path / "top"
    sh.copytree(run, top)
    for name in ("00-sl", "01-rl"):
        sh.copytree(run, top / "rounds" / name)
        (top / "rounds" / name / "audit").mkdir()
        (top / "rounds" / name / "audit" / "summary.json").write_text(json.dumps(AUDIT))
    (top / "iterate.json").write_text(json.dumps({"rounds": [{"name": "00-sl", "gate": None}, {"name": "01-rl", "gate": {
        "passed": False, "reason": "its CI is not above 0.5"}, "audit_vs_base": {"lc_win_rate": 0.6, "lc_ci_low": 0.52,
        "lc_ci_high": 0.68}}], "best": {"round": "00-sl"}}))
    (top / "audit").mkdir()
    (top / "audit" / "summary.json").write_text(json.dumps(AUDIT))
    (top / "train").mkdir()
    metrics = [{"step": s, "loss": 0.7 - 0.01 * s, "rewards/accuracies": 0.5 + 0.02 * s, "lr": 1e-6} for s in range(1, 9)]
    (top / "train" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in [*metrics, {"step": 8, "eval/loss": 0.6}]))
    page = Page(browser, write_report(top))
    try:
        p = page.open()
        overall = p.eval_on_selector_all("#audit tbody tr:first-child td", "tds => tds.map(t => t.textContent)")
        assert overall[:2] == ["overall", "0.56"] and overall[2] == "0.5 – 0.62"
        assert len(p.query_selector_all("#rounds tr.round-row")) == 2
        gates = p.eval_on_selector_all("#rounds tr.round-row td:nth-last-child(2)", "tds => tds.map(t => t.textContent)")
        assert gates == ["not gated (best)", "stop: its CI is not above 0.5"]
        vs_base = p.eval_on_selector_all("#rounds tr.round-row td:nth-child(9)", "tds => tds.map(t => t.textContent)")
        assert vs_base == ["—", "0.6 [0.52, 0.68]"]
        assert len(p.query_selector_all("#training-charts svg polyline")) >= 3
        shot(p, "overview-audit-rounds")
        page.clean()
    finally:
        page.close()


@pytest.mark.model
def test_a_real_model_run_renders(browser, hf_engine, tmp_path):
    from cai_pipeline.config import load_config
    from cai_pipeline.pipeline import run_pipeline
    from cai_pipeline.store import RunStore

    cfg = load_config(REPO / "configs" / "demo.yaml", [
        f"out_dir={tmp_path / 'real'}", "prompts.limit=1", "sample.max_tokens=16", "revise.max_tokens=16",
        "revise.rounds=1", "revise.few_shot=0", "judge.principles=1", "stages=[sample,revise,pairs,judge,export]"])
    manifest = off_the_loop(run_pipeline, cfg, engine=hf_engine, summary=False)
    page = Page(browser, tmp_path / "real" / "report.html")
    try:
        p = page.open("traces")
        assert len(traces_shown(p)) == manifest["prompts"]["kept"]
        p.click(".trace-row")
        p.wait_for_selector("#trace-detail .permalink")
        revised = RunStore(tmp_path / "real").read_stage("revise")  # whatever the model said, each round is shown
        want = [x["critique"] or "(empty)" for r in revised for x in r["rounds"]]
        assert p.eval_on_selector_all("#trace-detail .critique", "cs => cs.map(c => c.textContent)") == want
        shot(p, "real-model-trace")
        page.clean()
    finally:
        page.close()
