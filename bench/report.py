"""The report at scale: a synthetic run folder of N traces (2 samples per prompt, 4 critique/revision rounds
each, one sampled and two revision pairs judged under 2 principles, datasets), then

1. build time: `write_report` (read the folder, build the document and traces, render, write), best of 3;
2. bytes per trace beyond its own text: (file size − the page's fixed part − the UTF-8 bytes of every text the
   run holds: prompts, responses, critiques, revisions) / N — what ids, verdicts, flags and JSON cost;
3. in headless Chromium (file://): time to interactive — navigation start to the trace list drawn and
   answering (`window.__listReady`; goal ≤ 2 s at N = 10,000), DOMContentLoaded and load; then opening one
   trace (its block parsed on first use), a principle filter, and the first text search (which parses every
   block and builds the search text once; it includes the search box's 150 ms debounce). Best of 3 page
   loads: a shared machine only ever adds time.

    .venv/bin/python bench/report.py                # 10,000 traces; results in bench/results/report.json
    .venv/bin/python bench/report.py --smoke        # 500 traces, results in bench/results/report-smoke.json
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load_average, machine, save  # noqa: E402
from cai_pipeline import records  # noqa: E402
from cai_pipeline.store import RunStore, write_parquet  # noqa: E402

ROUNDS, SAMPLES, SHARD, REPS = 4, 2, 256, 3
WORDS = ("the a model answer safe harm help people question because would could response principle careful "
         "explain reason honest clear risk legal advice avoid instead offer resource kindly detail").split()
PRINCIPLES = ("violence", "weapons", "crime", "self_harm", "hate", "privacy", "medical", "deception")


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def prompt_rows(rng: random.Random, pid: str) -> tuple[list[dict], list[dict]]:
    """One prompt's sample and revise rows."""
    prompt = [{"role": "user", "content": words(rng, 25) + " ?"}]
    samples, revised = [], []
    for i in range(SAMPLES):
        text = words(rng, 80)
        samples.append({"prompt_id": pid, "sample_idx": i, "prompt": prompt, "response": text,
                        "finish_reason": rng.choice(("stop", "stop", "length")), "n_tokens": 100})
        rounds, current = [], text
        for r in range(ROUNDS):
            revision = words(rng, 80)
            rounds.append({"principle_id": PRINCIPLES[(i + r * 3 + len(pid)) % len(PRINCIPLES)],
                           "critique": words(rng, 60), "revision": revision, "cleaned": False, "kept_previous": None,
                           "truncated": False})
            current = revision
        revised.append({"prompt_id": pid, "sample_idx": i, "prompt": prompt, "initial": text,
                        "initial_truncated": samples[-1]["finish_reason"] == "length", "rounds": rounds,
                        "final": current, "final_truncated": False})
    return samples, revised


def judged(rng: random.Random, pairs: list[dict]) -> list[dict]:
    out = []
    for p in pairs:
        verdicts = [{"principle_id": rng.choice(PRINCIPLES), "weight": 1.0, "p_a_first": rng.random(),
                     "p_a_second": rng.random(), "reasoning_first": None, "reasoning_second": None} for _ in range(2)]
        p_a = sum((v["p_a_first"] + v["p_a_second"]) / 2 for v in verdicts) / 2
        out.append({**p, "judge_principle_ids": [v["principle_id"] for v in verdicts], "verdicts": verdicts,
                    "p_a": p_a, "consistent": rng.random() < 0.5})
    return out


def sampled_pair(x: dict, y: dict) -> dict:
    from cai_pipeline.stages.pairs import pair_id

    return {"pair_id": pair_id(x["prompt_id"], "sampled", x["sample_idx"], y["sample_idx"]), "prompt_id": x["prompt_id"],
            "prompt": x["prompt"], "a": x["response"], "b": y["response"], "origin": "sampled",
            "a_idx": x["sample_idx"], "b_idx": y["sample_idx"], "a_truncated": x["finish_reason"] == "length",
            "b_truncated": y["finish_reason"] == "length", "revision_principle_ids": []}


def shard(rng: random.Random, first: int, n: int) -> dict[str, list[dict]]:
    """Every stage's rows for prompts first … first+n−1."""
    from cai_pipeline.stages.pairs import revision_pairs

    samples, revised, pairs = [], [], []
    for k in range(first, first + n):
        s, r = prompt_rows(rng, f"p{k:07d}")
        samples += s
        revised += r
        pairs += [sampled_pair(*s), *revision_pairs(r)]
    return {"sample": samples, "revise": revised, "pairs": pairs, "judge": judged(rng, pairs)}


def make_folder(root: Path, n: int) -> int:
    """Write the synthetic run; returns the UTF-8 bytes of all its texts."""
    from cai_pipeline.pipeline import StageTotals
    from cai_pipeline.stages.export import preference_row

    rng, store = random.Random(0), RunStore(root)
    models = {"sample": records.SampleRecord, "revise": records.ReviseRecord, "pairs": records.PairRecord,
              "judge": records.JudgeRecord}
    stats = {name: [] for name in models}
    prefs, text_bytes = [], 0
    for index, first in enumerate(range(0, n, SHARD)):
        rows = shard(rng, first, min(SHARD, n - first))
        for name, model in models.items():
            s = {"in": len(rows["sample" if name != "judge" else "pairs"]), "out": len(rows[name]), "rejected": {},
                 "counts": {}, "seconds": 0.0, "output_tokens": 0}
            store.write_shard(name, index, rows[name], model, [], s)
            stats[name].append(s)
        prefs += [preference_row(p) for p in rows["judge"]]
        text_bytes += sum(len(r["prompt"][0]["content"].encode()) + len(r["response"].encode()) for r in rows["sample"])
        text_bytes += sum(len(x["critique"].encode()) + len(x["revision"].encode()) for r in rows["revise"] for x in r["rounds"])
    write_parquet(store.layout.split_file("preferences", "train"), prefs, records.PreferenceRecord)
    manifest = {"package": "cai-pipeline", "model": "synthetic", "seed": 0, "config": {}, "stages": {
        name: StageTotals(s, len(s)).as_dict() for name, s in stats.items()}}
    store.write_manifest(manifest)
    return text_bytes


def build(root: Path) -> tuple[float, Path]:
    from cai_pipeline.report import write_report

    best = float("inf")
    for _ in range(REPS):
        start = time.perf_counter()
        path = write_report(root)
        best = min(best, time.perf_counter() - start)
    return best, path


INTERACT = """async () => {
  const frame = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
  const nav = performance.getEntriesByType("navigation")[0];
  const out = {tti_ms: window.__listReady, dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd};
  const row = document.querySelector(".trace-row");
  let t0 = performance.now();
  row.click();
  await frame();
  out.open_trace_ms = performance.now() - t0;
  const sel = document.querySelector("#filter-principle");
  t0 = performance.now();
  sel.value = sel.options[1].value; sel.dispatchEvent(new Event("change"));
  await frame();
  out.filter_ms = performance.now() - t0;
  const box = document.querySelector("#search"), count = document.querySelector("#trace-count");
  const before = count.textContent;
  t0 = performance.now();
  box.value = "zzz-no-such-word"; box.dispatchEvent(new Event("input"));
  while (count.textContent === before) await frame();
  out.first_search_ms = performance.now() - t0;
  return out;
}"""


def browse(path: Path) -> dict:
    from playwright.sync_api import sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    runs = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=flags)
        for _ in range(REPS):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(path.resolve().as_uri() + "#traces", wait_until="load")
            while page.evaluate("() => window.__listReady === undefined"):
                time.sleep(0.02)
            runs.append(page.evaluate(INTERACT))
            page.close()
        browser.close()
    return {k: round(min(r[k] for r in runs), 1) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=10_000)
    ap.add_argument("--smoke", action="store_true", help="500 traces: checks the benchmark runs, measures nothing")
    args = ap.parse_args()
    n = 500 if args.smoke else args.traces
    from cai_pipeline.report.page import ASSETS

    with tempfile.TemporaryDirectory(prefix="cai-report-bench-") as tmp:
        root = Path(tmp) / "run"
        start = time.perf_counter()
        text_bytes = make_folder(root, n)
        made = time.perf_counter() - start
        seconds, path = build(root)
        size = path.stat().st_size
        fixed = sum(len((ASSETS / f).read_bytes()) for f in ("template.html", "report.css", "report.js"))
        result = {"machine": machine(), "load_average": load_average(), "traces": n, "rounds": ROUNDS,
                  "samples_per_prompt": SAMPLES, "folder_seconds": round(made, 2), "build_seconds": round(seconds, 3),
                  "file_bytes": size, "text_bytes": text_bytes,
                  "bytes_per_trace_beyond_text": round((size - fixed - text_bytes) / n, 1),
                  "browser": browse(path)}
    print(result)
    print(f"saved {save('report-smoke' if args.smoke else 'report', result)}")


if __name__ == "__main__":
    main()
