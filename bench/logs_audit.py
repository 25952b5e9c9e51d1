"""Log audits and held-out checks (issue 23): what they cost.

1. **A log audit against a generating audit of the same size**, through the audit's own functions on one
   vLLM engine (the embedded model as model, baseline and judge, so no model switch is timed):
     log audit        N logged responses, read from a file; each asked K compliance questions
                      (prompts/violation.j2) and the refusal question: N·(K + 1) one-token prefills
     generating audit N prompts answered by the model and by the baseline (2N generations of --max-tokens),
                      N pairs judged on K principles in both orders, 2N refusal questions
   measured at --n responses and scaled linearly to 1,000 (the engine batches each step into one call, so
   per-response cost is flat once the batch fills the machine; the scaling is stated, not measured). Wall
   seconds and this process's CPU seconds (vLLM's CPU engine runs in it): on a shared machine the CPU seconds
   are the cost, the wall seconds depend on the neighbours.
2. **Decontamination and near-duplicates at scale** (pure Python, ngrams.py), each in a fresh process for a clean
   peak RSS: 1k audit prompts checked against 100k training prompts (the audit's direction: the 1k are
   indexed, the 100k stream past), 100k prompts checked against 1k (then the 100k are the indexed side: the
   memory case), and near-duplicate removal over 100k prompts (Jaccard ≥ 0.8 on word 3-grams).
   The prompts are synthetic: 8–40 words drawn from a Zipf(1.1) vocabulary of 30k words, with 1% planted
   8-gram overlaps and 1% planted near-duplicates (the previous prompt with one word added), so the counts are
   known. Memory: the peak RSS of the child beyond what it held before the step (the prompts themselves).

    .venv/bin/python bench/logs_audit.py                 # both parts (2 CPU cores: a few minutes)
    .venv/bin/python bench/logs_audit.py --part decontam # the pure part alone
    .venv/bin/python bench/logs_audit.py --smoke         # that it runs: tiny sizes, not numbers
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import load_average, machine, peak_rss_gib, run_child, save  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# Part 2: decontamination (pure)


def synthetic(k: int, seed: int, vocab: int = 30_000) -> list[str]:
    rng = random.Random(seed)
    cum = list(itertools.accumulate(1 / (i + 1) ** 1.1 for i in range(vocab)))  # once, not per prompt
    words = [f"w{i}" for i in range(vocab)]
    return [" ".join(rng.choices(words, cum_weights=cum, k=rng.randint(8, 40))) for _ in range(k)]


def decontam_child(kind: str, big: int, small: int) -> dict:
    from cai_pipeline.ngrams import near_duplicates, overlaps

    training, audit = synthetic(big, 1), synthetic(small, 2)
    rng = random.Random(3)
    planted = rng.sample(range(small), max(1, small // 100))
    for i in planted:  # an 8-gram of a training prompt inside an audit prompt
        source = training[rng.randrange(big)].split()
        audit[i] = " ".join(audit[i].split()[:3] + source[:8] + audit[i].split()[3:])
    base = peak_rss_gib()
    start = time.perf_counter()
    if kind == "audit_vs_training":
        found = len(overlaps(audit, training, 8))
    elif kind == "training_vs_audit":
        found = len(overlaps(training, audit, 8))
    else:
        planted = sorted(rng.sample(range(1, big), big // 100))  # in order: a chain i-1, i stays a chain
        for i in planted:  # near-duplicates: the previous prompt with one word added (Jaccard ≥ 6/7 on 3-grams)
            training[i] = training[i - 1] + " again"
        found = len(near_duplicates(training, 0.8, 3))
    seconds = time.perf_counter() - start
    return {"kind": kind, "checked_or_texts": small if kind == "audit_vs_training" else big,
            "against": big if kind == "audit_vs_training" else small, "found": found, "planted": len(planted),
            "seconds": round(seconds, 2), "peak_rss_gib": round(peak_rss_gib(), 3),
            "rss_before_gib": round(base, 3), "extra_gib": round(peak_rss_gib() - base, 3)}


# ---------------------------------------------------------------------------------------------------------
# Part 1: log audit vs generating audit


def cost_child(n: int, k: int, max_tokens: int) -> dict:
    import cai_pipeline.stages  # noqa: F401  (the stage registry first: audit.stage is imported through it)
    from cai_pipeline.audit.compliance import compliance_rows
    from cai_pipeline.audit.logs import read_log
    from cai_pipeline.audit.stage import add_refusals, generate, judge, make_pairs
    from cai_pipeline.config import load_config
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.constitution import load_constitution
    from cai_pipeline.engines import make_engine
    from cai_pipeline.models import resolve_model
    from cai_pipeline.templates import TemplateSet

    quiet_libraries()
    cfg = load_config(str(REPO / "configs" / "demo.yaml"), ["out_dir=/tmp/bench-logs", f"audit.max_tokens={max_tokens}",
                                                          "audit.n=1"])
    constitution = load_constitution(REPO / "constitutions" / "harmless.yaml")
    principles, templates = constitution.principles[:k], TemplateSet.for_constitution(constitution)
    prompts = [json.loads(line) for line in (REPO / "cai_pipeline" / "data" / "audit_prompts.jsonl").read_text().splitlines()]
    prompts = [{"prompt_id": f"p{i}", "prompt": [{"role": "user", "content": p["prompt"]}], "tag": p["tag"]}
               for i, p in enumerate((prompts * (n // len(prompts) + 1))[:n])]
    t0 = time.perf_counter()
    engine = make_engine(kind="vllm", model=resolve_model("embedded"), seed=0)
    startup = time.perf_counter() - t0
    timings, cpu = {}, {}
    # The generating audit, step by step (the stage's own functions)
    t, c = time.perf_counter(), time.process_time()
    model_rows, _ = generate(engine, prompts, cfg, "model", "embedded")
    base_rows, _ = generate(engine, prompts, cfg, "baseline", "embedded")
    timings["generate_both_sides"], cpu["generate_both_sides"] = time.perf_counter() - t, time.process_time() - c
    pairs, _ = make_pairs(model_rows + base_rows)
    t, c = time.perf_counter(), time.process_time()
    judge(engine, pairs, principles, cfg, templates)
    timings["judge_pairs_both_orders"], cpu["judge_pairs_both_orders"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    add_refusals(engine, model_rows + base_rows, templates)
    timings["refusals_both_sides"], cpu["refusals_both_sides"] = time.perf_counter() - t, time.process_time() - c
    # The log audit: the model's responses written as a log (OpenAI log lines), read back, scored pointwise
    log = Path("/tmp/bench-logs.jsonl")
    log.write_text("".join(json.dumps({"request": {"messages": r["prompt"]}, "response": {"choices": [
        {"message": {"role": "assistant", "content": r["response"]}}]}}) + "\n" for r in model_rows))
    t, c = time.perf_counter(), time.process_time()
    rows, _ = read_log(str(log), "audit.responses")
    logged = [{**r.as_dict(), "side": "model"} for r in rows]
    timings["read_log"], cpu["read_log"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    compliance_rows(engine, logged, principles, templates)
    timings["compliance"], cpu["compliance"] = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    add_refusals(engine, logged, templates)
    timings["refusals_log"], cpu["refusals_log"] = time.perf_counter() - t, time.process_time() - c
    engine.close()
    gen_steps = ("generate_both_sides", "judge_pairs_both_orders", "refusals_both_sides")
    log_steps = ("read_log", "compliance", "refusals_log")
    per_k = 1000 / n
    out = {"n": n, "k": k, "max_tokens": max_tokens, "engine_startup_s": round(startup, 1),
           "timings_s": {key: round(v, 2) for key, v in timings.items()},
           "cpu_s": {key: round(v, 2) for key, v in cpu.items()}}
    for name, table in (("wall", timings), ("cpu", cpu)):
        generating, log_audit = sum(table[s] for s in gen_steps), sum(table[s] for s in log_steps)
        out[f"{name}_generating_per_1000_s"] = round(generating * per_k)
        out[f"{name}_log_per_1000_s"] = round(log_audit * per_k)
    return {**out,
            "requests": {"log": n * (k + 1), "generating": 2 * n + n * k * 2 + 2 * n},
            "peak_rss_gib": round(peak_rss_gib(), 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=["all", "cost", "decontam"], default="all")
    p.add_argument("--n", type=int, default=40, help="responses for the cost part")
    p.add_argument("--k", type=int, default=4, help="principles for the cost part")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *sizes = args.child
        out = cost_child(*map(int, sizes)) if kind == "cost" else decontam_child(kind, *map(int, sizes))
        print(json.dumps(out))
        return
    big, small = (2_000, 100) if args.smoke else (100_000, 1_000)
    n, k, max_tokens = (4, 2, 16) if args.smoke else (args.n, args.k, args.max_tokens)
    result = {"machine": machine(), "load_average_start": round(load_average(), 2)}
    if args.part in ("all", "decontam"):
        result["decontamination"] = [run_child([__file__, "--child", kind, str(big), str(small)])
                                     for kind in ("audit_vs_training", "training_vs_audit", "near_duplicates")]
        print(json.dumps(result["decontamination"], indent=1))
    if args.part in ("all", "cost"):
        result["cost"] = run_child([__file__, "--child", "cost", str(n), str(k), str(max_tokens)])
        print(json.dumps(result["cost"], indent=1))
    result["load_average_end"] = round(load_average(), 2)
    if not args.smoke:
        print(save("logs-audit" if args.part == "all" else f"logs-audit-{args.part}", result))


if __name__ == "__main__":
    main()
