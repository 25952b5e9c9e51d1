"""Audit judge benchmark: the shared-prefix judge layout against today's question-first layout, at k = 18.

An audit asks every principle of the constitution about every pair, in both orders: 18 principles × 2 orders
× pairs. In the question-first layout (prompts/judge.j2) the principle's question comes before the responses,
so the 36 conversations of a pair share only the conversation. In the shared-prefix layout
(prompts/judge_shared.j2) the conversation and both responses come first and the question last, so the 18
conversations of one pair and order share everything up to the question, and vLLM's prefix cache computes
that prefix once. `choice_logprobs` empties the prefix cache at the start of each call (the judge's exact
symmetry rests on it), so the sharing happens within the call: all k principles of a pair go in one call.
vLLM caches whole KV blocks only (16 tokens on GPU, 128 by default on CPU), so on CPU we also try 32.

Speed, on two workloads: hh-rlhf pairs (the chosen and rejected replies of the harmless-base test set, after
their whole multi-turn conversation; replies are short) and audit pairs (the bundled audit prompts, each with
two responses the model samples at the audit's --max-tokens: a short prompt and two long responses, as an
audit judges them). Every principle of constitutions/harmless.yaml, both
orders, each layout `--reps` times interleaved on one engine, best run kept; a verdict is one (pair,
principle) judged in both orders. Also the prompt tokens each layout sends and the share a perfect prefix cache
(one token at a time) would still compute, and, per block size, sampling speed (the price of a small block).

Quality: `cai judge-eval`'s accuracy against the human label and order consistency for each layout, on the
first --rows usable rows, k = --quality-k principles per pair.

    .venv/bin/python bench/audit.py                  # vLLM: 32 pairs per workload, 200 rows for quality
    .venv/bin/python bench/audit.py --smoke          # 2 pairs, 4 rows, one rep: that it runs, not numbers
    .venv/bin/python bench/audit.py --quality-only --rows 40 --out audit-quality   # the accuracy part alone
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
from cai_pipeline import judging as judge  # noqa: E402
from cai_pipeline.console import quiet_libraries  # noqa: E402
from cai_pipeline.constitution import load_constitution  # noqa: E402
from cai_pipeline.engines import make_engine, resolve_kind  # noqa: E402
from cai_pipeline.engines.chat import prompt_ids  # noqa: E402
from cai_pipeline.judge_eval import evaluate_labelled, read_labelled, shown_pairs  # noqa: E402
from cai_pipeline.templates import TemplateSet  # noqa: E402

HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
LAYOUTS = ("question_first", "shared_prefix")


def _prefix_hashes(ids: list[int]) -> list[int]:
    """h[i] identifies ids[:i] (a polynomial rolling hash mod 2^61 - 1)."""
    mod, h, out = (1 << 61) - 1, 0, [0]
    for t in ids:
        h = (h * 1_000_003 + t + 1) % mod
        out.append(h)
    return out


def prompt_tokens(engine, pairs, principles, templates, layout: str, block: int | None) -> dict:
    """Tokens the judge prompts of one call hold, and the share a prefix cache would still compute: each prompt
    reuses the longest prefix it shares with an earlier prompt of the call, token by token (the bound) and in
    whole blocks of `block` tokens (what vLLM caches)."""
    jobs, _ = judge.plan(pairs, principles, len(principles), 0, both_orders=True)
    seqs = [prompt_ids(engine.tokenizer, c) for job in jobs for c in judge.conversations(job, templates, False, layout)]
    seen: set[int] = set()
    total = shared = shared_blocks = 0
    for ids in seqs:
        hashes = _prefix_hashes(ids)
        lo, hi = 0, len(ids)  # the longest seen prefix (the seen set is prefix-closed, so bisect)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if hashes[mid] in seen else (lo, mid - 1)
        total, shared = total + len(ids), shared + lo
        shared_blocks += (min(lo, len(ids) - 1) // block) * block if block else 0
        seen.update(hashes[1:])
    out = {"prompts": len(seqs), "tokens": total, "computed_share": round(1 - shared / total, 4)}
    if block:
        out[f"computed_share_block_{block}"] = round(1 - shared_blocks / total, 4)
    return out


def audit_pairs(engine, n: int, max_tokens: int) -> list[dict]:
    """n bundled audit prompts, each with two responses sampled from the model: what an audit judges."""
    from cai_pipeline.audit.prompts import BUNDLED_PROMPTS
    from cai_pipeline.engines import GenParams
    from cai_pipeline.inputs import load_prompts

    prompts = [r["prompt"] for r in load_prompts(str(BUNDLED_PROMPTS), limit=n).rows]
    outs = engine.generate(prompts, GenParams(n=2, temperature=0.8, top_p=0.95, max_tokens=max_tokens, seed=0))
    return [{"prompt": p, "a": o[0].text, "b": o[1].text} for p, o in zip(prompts, outs)]


def time_layouts(engine, pairs, principles, templates, reps: int, block: int | None) -> dict:
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
    return {"pairs": len(pairs), "verdicts": verdicts, "seconds": {k: round(v, 2) for k, v in best.items()},
            "verdicts_per_s": {k: round(verdicts / v, 2) for k, v in best.items()},
            "speedup_shared_prefix": round(best["question_first"] / best["shared_prefix"], 2),
            "tokens": {layout: prompt_tokens(engine, pairs, principles, templates, layout, block)
                       for layout in LAYOUTS}}


def sampling_speed(engine, prompts) -> float:
    """Output tokens/s of one sampled batch (the demo's sampling settings): what a block size costs generation."""
    from cai_pipeline.engines import GenParams

    start, before = time.perf_counter(), engine.stats.output_tokens
    engine.generate(prompts, GenParams(n=2, temperature=0.8, top_p=0.95, max_tokens=64, seed=0))
    return round((engine.stats.output_tokens - before) / (time.perf_counter() - start), 1)


def speed(engine, workloads: dict, principles, templates, reps: int, block: int | None) -> dict:
    judge.judge_pairs(engine, workloads["hh-rlhf"][:1], principles, k=2, templates=templates)  # warm-up
    out = {name: time_layouts(engine, pairs, principles, templates, reps, block) for name, pairs in workloads.items()}
    out["sampling_tok_s"] = sampling_speed(engine, [p["prompt"][:1] for p in workloads["hh-rlhf"]])
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
    ap.add_argument("--pairs", type=int, default=32, help="pairs per workload for the speed comparison")
    ap.add_argument("--rows", type=int, default=200, help="hh-rlhf rows for the quality comparison")
    ap.add_argument("--quality-k", type=int, default=18, help="principles per pair in the quality comparison")
    ap.add_argument("--max-tokens", type=int, default=256, help="length of the audit workload's responses")
    ap.add_argument("--block-sizes", type=int, nargs="*", default=None,
                    help="vLLM KV block sizes to time (default: the engine's own, and 32 on CPU)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quality-only", action="store_true", help="only the accuracy/consistency comparison, at the "
                    "engine's own block size")
    ap.add_argument("--smoke", action="store_true", help="2 pairs, 4 rows, one rep: that it runs, not numbers")
    ap.add_argument("--out", default="audit", help="bench/results/<name>.json")
    args = ap.parse_args()
    if not HH.exists():
        print(f"{HH} is absent: nothing to benchmark on", file=sys.stderr)
        return 2
    if args.smoke:
        args.pairs, args.rows, args.reps, args.quality_k, args.max_tokens, args.out = 2, 4, 1, 2, 32, "audit-smoke"
    quiet_libraries()
    constitution = load_constitution(REPO / "constitutions" / "harmless.yaml")
    templates = TemplateSet.for_constitution(constitution)
    labelled, skipped = read_labelled(str(HH), max(args.rows, args.pairs))
    pairs, _ = shown_pairs(labelled[: args.pairs], 0)
    workloads = {"hh-rlhf": pairs}
    kind = resolve_kind(args.engine)
    blocks = args.block_sizes if args.block_sizes is not None else [None] + ([32] if kind == "vllm" and not cuda() else [])
    result = {"command": " ".join(["python bench/audit.py", *sys.argv[1:]]), "engine": kind, "model": args.model,
              "machine": machine(), "load_before": load_average(), "speed": {}}
    if args.quality_only:
        blocks = [None]
    for i, block in enumerate(blocks):
        options = {"block_size": block} if block else {}
        engine = make_engine(kind=kind, model=args.model, seed=0, **options)
        size = engine.llm.llm_engine.vllm_config.cache_config.block_size if kind == "vllm" else None
        try:
            if not args.quality_only:
                if "audit" not in workloads:
                    workloads["audit"] = audit_pairs(engine, args.pairs, args.max_tokens)
                result["speed"][f"block_{size}"] = speed(engine, workloads, constitution.principles, templates,
                                                         args.reps, size)
                print(json.dumps(result["speed"], indent=1), flush=True)
            if i == 0:
                result["quality"] = quality(engine, labelled[: args.rows], skipped, constitution.principles,
                                            templates, args.quality_k)
        finally:
            engine.close()
    result["load_after"] = load_average()
    print(json.dumps(result, indent=1))
    print(f"written: {save(args.out, result)}")
    return 0


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
