"""The sample → revise pass (K=2) against the engine's ceiling, on 48 prompts of the hh-rlhf harmless test.

Ceiling: the pass's own requests (the same conversations, so the same prefix-cache hits, each generating
exactly as many tokens as in the pass: ignore_eos) with no dependencies between them, the same sampling, at
most as many in flight as the pass had (N_PROMPTS x n), each slot refilled the moment it frees. The pass's
throughput over that ceiling says how much the multi-step stage loses to waiting: chains (each row's next
request goes in as soon as its last finished) vs rounds (one batch per step, every round waits for its
slowest sequence).

    .venv/bin/python bench/pipeline.py            # results in bench/results/pipeline.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import bench_prompts, load_average, machine, save  # noqa: E402

N_PROMPTS, N, ROUNDS, MAX_TOKENS, SEED = 48, 2, 2, 128, 0


class Recorder:
    """Wraps an engine and keeps every request's conversation and output lengths (measured after timing)."""

    def __init__(self, engine, native: bool):
        self.engine, self.name, self.model, self.stats = engine, engine.name, engine.model, engine.stats
        self.calls: list[tuple[list, list[int]]] = []
        if native:
            self.agenerate = self._agenerate

    def generate(self, convs, params):
        out = self.engine.generate(convs, params)
        self.calls += [(c, [x.n_tokens for x in comps]) for c, comps in zip(convs, out)]
        return out

    async def _agenerate(self, conv, params):
        comps = await self.engine.agenerate(conv, params)
        self.calls.append((conv, [x.n_tokens for x in comps]))
        return comps


def run_pass(engine, mode: str, cfg) -> dict:
    from cai_pipeline.constitution import load_constitution
    from cai_pipeline.stages import revise, sample
    from cai_pipeline.stages.base import StageContext
    from cai_pipeline.templates import TemplateSet

    constitution = load_constitution("constitutions/harmless.yaml")
    ctx = StageContext(seed=SEED, shard=0, cfg=cfg, constitution=constitution,
                       templates=TemplateSet.for_constitution(constitution))
    rec = Recorder(engine, native=mode == "chains")
    rows = [{"prompt_id": f"p{i}", "prompt": c} for i, c in enumerate(bench_prompts(N_PROMPTS))]
    start = time.perf_counter()
    samples = sample.run({"prompts": rows}, rec, ctx).rows
    revised = revise.run({"sample": samples}, rec, ctx)
    wall = time.perf_counter() - start
    from cai_pipeline.engines.chat import prompt_ids

    requests = [(prompt_ids(engine.tokenizer, conv), n) for conv, ns in rec.calls for n in ns]
    tokens = sum(n for _, n in requests)
    return {"mode": mode, "wall_s": round(wall, 1), "output_tokens": tokens, "tok_per_s": round(tokens / wall, 1),
            "prompts_per_min": round(N_PROMPTS / wall * 60, 1), "rows": len(revised.rows),
            "requests": len(requests), "calls": requests}


def ceiling(engine, requests: list[tuple[list[int], int]], in_flight: int) -> float:
    """tok/s of the pass's own requests (each conversation as token ids, and its output length) with no
    dependencies between them: each of `in_flight` slots takes the next request the moment its last one
    finished. Same sampling as the pass (top_p 0.95 through the engine's own path), the same prompts (so the
    same prefix-cache hits), and as many in flight as the pass had at most: more would overflow the KV cache
    and measure preemption instead."""
    from vllm.inputs import TokensPrompt

    from cai_pipeline.engines import GenParams

    queue = [(TokensPrompt(prompt_token_ids=ids), max(out, 1)) for ids, out in reversed(requests)]
    core, active, tokens = engine.llm.llm_engine, 0, 0
    engine.llm.reset_prefix_cache()
    start = time.perf_counter()
    while queue or active:
        while queue and active < in_flight:
            prompt, out = queue.pop()
            params = engine._sampling(GenParams(max_tokens=out, temperature=0.8, top_p=0.95), 0)
            params.min_tokens, params.ignore_eos = out, True  # exactly as long as in the pass
            core.add_request(f"ceiling-{len(queue)}", prompt, params)
            active += 1
        for output in core.step():
            if output.finished:
                active, tokens = active - 1, tokens + len(output.outputs[0].token_ids)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    global N_PROMPTS
    if len(sys.argv) > 1:  # a smaller smoke run: bench/pipeline.py 8
        N_PROMPTS = int(sys.argv[1])
    from cai_pipeline.config import load_config
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.engines import make_engine

    quiet_libraries()
    load = load_average()
    cfg = load_config(None, ["out_dir=unused", f"sample.n={N}", f"sample.max_tokens={MAX_TOKENS}",
                             f"revise.rounds={ROUNDS}", f"revise.max_tokens={MAX_TOKENS}"])
    engine = make_engine(kind="vllm", model="embedded", seed=SEED)
    engine.generate(bench_prompts(2), __import__("cai_pipeline.engines", fromlist=["GenParams"]).GenParams(max_tokens=8))
    result = {"machine": machine(), "load_avg_at_start": round(load, 2),
              "workload": f"{N_PROMPTS} hh-rlhf prompts, n={N}, K={ROUNDS}, {MAX_TOKENS} max tokens per step"}
    for mode in ("chains", "rounds"):
        run = run_pass(engine, mode, cfg)
        top = ceiling(engine, run.pop("calls"), in_flight=N_PROMPTS * N)
        run.update(ceiling_tok_per_s=round(top, 1), over_ceiling=round(run["tok_per_s"] / top, 3))
        result[mode] = run
        print(f"{mode:6} {run['tok_per_s']:6.1f} tok/s  ceiling {top:6.1f}  ratio {run['over_ceiling']:.3f}"
              f"  {run['prompts_per_min']} prompts/min  ({run['requests']} requests, {run['wall_s']} s)")
    engine.close()
    print(f"saved {save('pipeline', result)}")


if __name__ == "__main__":
    main()
