"""Judge benchmark: speed of the log-prob judge vs a generate-then-parse judge, and the judge's quality against
human labels on Anthropic's hh-rlhf harmless test set.

Speed: on the same pairs, principle draws and prompts, (1) our judge: one prefill per order, read log P(A) and
log P(B) after "The answer is: (", both orders; (2) a generate-then-parse judge: the same judge prompt without
the prefix, greedy, up to --gen-max-tokens tokens, then the first "(A)"/"A"/"Response B"… in the text is the
verdict, also in both orders. A verdict is one (pair, principle) judged in both orders. On vLLM we also time
the log-prob judge with both choices read from one request per conversation (`logprob_token_ids`), which the
engine does not do yet. All variants run interleaved, twice, in one process on one engine, each from a cold
prefix cache, and each keeps its faster run, so load from other work on the machine hits them alike.

Quality: `cai judge-eval` on the first --rows usable rows (accuracy vs the human label, order consistency,
first-position rate, margin), plus the generate-then-parse judge's accuracy and position bias on the speed pairs.

    .venv/bin/python bench/judge.py                      # vLLM if installed, embedded model, 500 rows
    .venv/bin/python bench/judge.py --engine hf --rows 100 --speed-rows 32
    .venv/bin/python bench/judge.py --model /path/to/bigger-instruct-model   # a bigger judge (judge.model)

Results go to bench/results/judge.json and are summarised in BENCHMARKS.md ("Judge").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cai_pipeline import judging as judge  # noqa: E402
from cai_pipeline.console import quiet_libraries  # noqa: E402
from cai_pipeline.constitution import load_constitution  # noqa: E402
from cai_pipeline.engines import GenParams, make_engine, resolve_kind  # noqa: E402
from cai_pipeline.judge_eval import evaluate_labelled, read_labelled, shown_pairs  # noqa: E402
from cai_pipeline.templates import TemplateSet  # noqa: E402

HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
_LETTER = (re.compile(r"\(([AB])\)"), re.compile(r"\b(?:response|answer|option|choice)\s*:?\s*\(?([AB])\b", re.I),
           re.compile(r"^\W*([AB])\b"))


def parse_letter(text: str) -> str | None:
    """The verdict a generating judge wrote: "(A)", "Response B", or a bare letter at the start; else None."""
    for pattern in _LETTER:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def generate_judge(engine, pairs, principles, k: int, max_tokens: int, templates) -> tuple[list[dict], float]:
    """Generate-then-parse, both orders: per pair and principle, the letters written with a first and b first."""
    jobs, refs = judge.plan(pairs, principles, k, 0, both_orders=False)
    by_key = {job.key: job for job in jobs}
    ordered = [by_key[key] for key, _ in refs]  # input order, to line up with the labels
    flipped = [judge.Job(job.key, job.messages, job.y, job.x, job.principles, False) for job in ordered]
    # The judge prompt alone, without the assistant prefix: the model writes its answer.
    convs = [c[:1] for job in ordered + flipped for c in judge.conversations(job, templates, reasoning=False)]
    start = time.perf_counter()
    outs = engine.generate(convs, GenParams(n=1, temperature=0.0, max_tokens=max_tokens, seed=0))
    seconds = time.perf_counter() - start
    letters = [parse_letter(o[0].text) for o in outs]
    half = len(letters) // 2
    verdicts = [{"a_first": letters[i], "b_first": letters[half + i], "text": outs[i][0].text} for i in range(half)]
    return verdicts, seconds


def logprob_judge(engine, pairs, principles, k: int, templates) -> tuple[list[dict], float]:
    start = time.perf_counter()
    records = judge.judge_pairs(engine, pairs, principles, k=k, templates=templates)
    return records, time.perf_counter() - start


def generate_quality(verdicts: list[dict], chosen_first: list[bool]) -> dict:
    """Per pair (k = 1): right when both orders name the human-chosen response; position picks per order."""
    parsed = [v for v in verdicts if v["a_first"] and v["b_first"]]
    # Right: both orders name the human-chosen response ((A) then (B) when it is a; (B) then (A) when it is b).
    right = sum((v["a_first"], v["b_first"]) == (("A", "B") if c else ("B", "A")) for v, c in zip(verdicts, chosen_first))
    picks = [x == "A" for v in verdicts for x in (v["a_first"], v["b_first"]) if x]
    return {"parsed_rate": round(len(parsed) / len(verdicts), 4),
            "accuracy": round(right / len(verdicts), 4),  # unparsed or order-inconsistent counts as wrong
            "consistency": round(sum((v["a_first"] != v["b_first"]) for v in parsed) / max(1, len(parsed)), 4),
            "first_position_rate": round(sum(picks) / max(1, len(picks)), 4),
            "examples": [v["text"] for v in verdicts[:3]]}


class OneRequestChoices:
    """vLLM only: both choices' log-probs from one request per conversation (`logprob_token_ids`), where the
    engine today sends one request per (conversation, choice). Measured here to size that change."""

    def __init__(self, engine):
        self.engine, self.name = engine, "vllm-one-request"

    def choice_logprobs(self, convs, choices):
        from cai_pipeline.engines.chat import choice_token_ids, prompt_ids

        e = self.engine
        ids = choice_token_ids(e.tokenizer, choices)
        prompts = [e._vllm.inputs.TokensPrompt(prompt_token_ids=prompt_ids(e.tokenizer, c)) for c in convs]
        params = e._vllm.SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=ids)
        outs = e.llm.generate(prompts, params, use_tqdm=False)
        return [{c: float(o.outputs[0].logprobs[0][t].logprob) for c, t in zip(choices, ids)} for o in outs]


def cold_cache(engine) -> None:
    """vLLM keeps computed prefixes across calls; without this, every run after the first would time cache hits."""
    if engine.name == "vllm":
        engine.llm.reset_prefix_cache()


def speed(engine, pairs, chosen_first, principles, templates, gen_budgets: list[int]) -> dict:
    judge.judge_pairs(engine, pairs[:2], principles, k=1, templates=templates)  # warm-up
    judges = {"logprob": lambda: logprob_judge(engine, pairs, principles, 1, templates)}
    if engine.name == "vllm":
        judges["logprob_one_request"] = lambda: logprob_judge(OneRequestChoices(engine), pairs, principles, 1, templates)
    for budget in gen_budgets:
        judges[f"generate_{budget}"] = lambda b=budget: generate_judge(engine, pairs, principles, 1, b, templates)
    best, outputs = {}, {}
    for _ in range(2):  # interleaved, best of two: load from other work hits every judge alike
        for name, run in judges.items():
            cold_cache(engine)
            outputs[name], seconds = run()
            best[name] = min(best.get(name, float("inf")), seconds)
    n = len(pairs)
    out = {"pairs": n, "principles_per_pair": 1,
           "seconds": {k: round(v, 2) for k, v in best.items()},
           "verdicts_per_s": {k: round(n / v, 3) for k, v in best.items()},
           "time_vs_logprob": {k: round(v / best["logprob"], 2) for k, v in best.items()}}
    out["generate_quality"] = {k: generate_quality(v, chosen_first) for k, v in outputs.items() if k.startswith("generate")}
    records = outputs["logprob"]
    out["logprob_accuracy_same_pairs"] = round(sum(not r["error"] and (r["p_a"] > 0.5 if c else r["p_a"] < 0.5)
                                                   for r, c in zip(records, chosen_first)) / n, 4)
    return out


def machine() -> dict:
    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "platform": platform.platform(),
            "python": platform.python_version(), "load_avg": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="auto", choices=["auto", "vllm", "hf"])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--rows", type=int, default=500, help="hh-rlhf rows for the quality numbers")
    ap.add_argument("--speed-rows", type=int, default=32, help="pairs for the speed comparison")
    ap.add_argument("--principles", type=int, default=2, help="k for the quality run")
    ap.add_argument("--gen-max-tokens", type=int, nargs="+", default=[16, 64],
                    help="token budgets of the generate-then-parse judge")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "judge.json"))
    args = ap.parse_args()
    if not HH.exists():
        print(f"{HH} is absent: nothing to benchmark on", file=sys.stderr)
        return 2
    quiet_libraries()
    kind = resolve_kind(args.engine)
    constitution = load_constitution(REPO / "constitutions" / "harmless.yaml")
    templates = TemplateSet.for_constitution(constitution)
    labelled, skipped = read_labelled(str(HH), args.rows)
    pairs, chosen_first = shown_pairs(labelled, 0)
    result = {"command": " ".join(["python bench/judge.py", *sys.argv[1:]]), "engine": kind, "model": args.model,
              "machine_before": machine()}
    engine = make_engine(kind=kind, model=args.model, seed=0)
    try:
        n = args.speed_rows
        result["speed"] = speed(engine, pairs[:n], chosen_first[:n], constitution.principles, templates,
                                args.gen_max_tokens)
        print(json.dumps(result["speed"], indent=1), flush=True)
        if not args.skip_quality:
            result["quality"] = evaluate_labelled(labelled, skipped, engine, constitution.principles,
                                                  k=args.principles, templates=templates)
            result["quality"]["principles"] = args.principles
    finally:
        engine.close()
    result["machine_after"] = machine()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
