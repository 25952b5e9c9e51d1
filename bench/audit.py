"""Audit judge benchmark: the shared-prefix judge layout against today's question-first layout, at k = 18.

An audit asks every principle of the constitution about every pair, in both orders: 18 principles × 2 orders
× pairs. In the question-first layout (prompts/judge.j2) the principle's question comes before the responses,
so each of the 36 conversations of a pair is a prompt of its own. In the shared-prefix layout
(prompts/judge_shared.j2) the conversation and both responses come first and the question last, so the 18
conversations of one pair and order share everything up to the question, and vLLM's prefix cache computes
that prefix once. `choice_logprobs` empties the prefix cache at the start of each call (the judge's exact
symmetry rests on it), so the sharing happens within the call: all k principles of a pair go in one call.

Speed: the same hh-rlhf pairs (chosen vs rejected reply of the harmless-base test set), every principle of
constitutions/harmless.yaml, both orders, each layout twice, interleaved in one process on one engine, best
run kept; a verdict is one (pair, principle) judged in both orders. Also the prompt tokens each layout sends
and the share of them that a perfect prefix cache would not recompute (the bound on the speed-up).

Quality: `cai judge-eval`'s accuracy against the human label and order consistency for each layout, on the
first --rows usable rows, k = --quality-k principles per pair.

    .venv/bin/python bench/audit.py                  # vLLM, 32 pairs for speed, 200 rows for quality
    .venv/bin/python bench/audit.py --smoke          # 4 pairs, 8 rows: checks that it runs (seconds, not numbers)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import load_average, machine, save  # noqa: E402
from cai_pipeline.cli_judge import evaluate_labelled, read_labelled, shown_pairs  # noqa: E402
from cai_pipeline.console import quiet_libraries  # noqa: E402
from cai_pipeline.constitution import load_constitution  # noqa: E402
from cai_pipeline.engines import make_engine, resolve_kind  # noqa: E402
from cai_pipeline.engines.chat import prompt_ids  # noqa: E402
from cai_pipeline.stages import judge  # noqa: E402
from cai_pipeline.templates import TemplateSet  # noqa: E402

HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
LAYOUTS = ("question_first", "shared_prefix")


def prompt_tokens(engine, pairs, principles, templates, layout: str) -> dict:
    """Tokens the judge prompts hold, and how many of them a perfect prefix cache would skip: for each prompt,
    the longest prefix it shares with an earlier prompt of the same call."""
    jobs, _ = judge.plan(pairs, principles, len(principles), 0, both_orders=True)
    seqs = [prompt_ids(engine.tokenizer, c) for job in jobs for c in judge.conversations(job, templates, False, layout)]
    total = sum(len(s) for s in seqs)
    seen: set[tuple[int, ...]] = set()
    shared = 0
    for s in seqs:
        lo, hi = 0, len(s)  # longest prefix already seen (prefixes of seen sequences are all in `seen`)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if tuple(s[:mid]) in seen else (lo, mid - 1)
        shared += lo
        seen.update(tuple(s[:i]) for i in range(1, len(s) + 1))
    return {"prompts": len(seqs), "tokens": total, "shared_tokens": shared,
            "recomputed_share": round(1 - shared / total, 4)}


def speed(engine, pairs, principles, templates, reps: int) -> dict:
    judge.judge_pairs(engine, pairs[:1], principles, k=2, templates=templates)  # warm-up
    best = {}
    for _ in range(reps):  # interleaved: load from other work hits both layouts alike
        for layout in LAYOUTS:
            start = time.perf_counter()
            records = judge.judge_pairs(engine, pairs, principles, k=len(principles), templates=templates,
                                        layout=layout)
            seconds = time.perf_counter() - start
            assert not any(r["error"] for r in records), [r["error"] for r in records if r["error"]][:1]
            best[layout] = min(best.get(layout, float("inf")), seconds)
    verdicts = len(pairs) * len(principles)
    out = {"pairs": len(pairs), "principles": len(principles), "verdicts": verdicts,
           "seconds": {k: round(v, 2) for k, v in best.items()},
           "verdicts_per_s": {k: round(verdicts / v, 2) for k, v in best.items()},
           "tokens": {layout: prompt_tokens(engine, pairs, principles, templates, layout) for layout in LAYOUTS}}
    out["speedup_shared_prefix"] = round(best["question_first"] / best["shared_prefix"], 2)
    return out


def quality(engine, labelled, skipped, principles, templates, k: int) -> dict:
    keys = ("n", "accuracy", "consistency", "verdict_consistency", "first_position_rate", "mean_margin",
            "verdicts_per_s")
    out = {}
    for layout in LAYOUTS:
        report = evaluate_labelled(labelled, skipped, engine, principles, k=k, templates=templates, layout=layout)
        out[layout] = {key: report[key] for key in keys}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf", "auto"])
    ap.add_argument("--model", default="embedded", help="the judge model")
    ap.add_argument("--pairs", type=int, default=32, help="hh-rlhf pairs for the speed comparison")
    ap.add_argument("--rows", type=int, default=200, help="hh-rlhf rows for the quality comparison")
    ap.add_argument("--quality-k", type=int, default=18, help="principles per pair in the quality comparison")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="4 pairs, 8 rows, one rep: that it runs, not numbers")
    ap.add_argument("--out", default="audit", help="bench/results/<name>.json")
    args = ap.parse_args()
    if not HH.exists():
        print(f"{HH} is absent: nothing to benchmark on", file=sys.stderr)
        return 2
    if args.smoke:
        args.pairs, args.rows, args.reps, args.out = 4, 8, 1, "audit-smoke"
    quiet_libraries()
    constitution = load_constitution(REPO / "constitutions" / "harmless.yaml")
    templates = TemplateSet.for_constitution(constitution)
    labelled, skipped = read_labelled(str(HH), max(args.rows, args.pairs))
    pairs, _ = shown_pairs(labelled[: args.pairs], 0)
    kind = resolve_kind(args.engine)
    result = {"command": " ".join(["python bench/audit.py", *sys.argv[1:]]), "engine": kind, "model": args.model,
              "machine": machine(), "load_before": load_average()}
    engine = make_engine(kind=kind, model=args.model, seed=0)
    try:
        result["speed"] = speed(engine, pairs, constitution.principles, templates, args.reps)
        print(json.dumps(result["speed"], indent=1), flush=True)
        result["quality"] = quality(engine, labelled[: args.rows], skipped, constitution.principles, templates,
                                    args.quality_k)
    finally:
        engine.close()
    result["load_after"] = load_average()
    print(json.dumps(result, indent=1))
    print(f"written: {save(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
