"""The sample → revise pass (K=2) against the engine's ceiling, on 48 prompts of the hh-rlhf harmless test.

Ceiling: one `generate` call over independent single-turn prompts with exactly the prompt and output lengths
the pass produced (ignore_eos, so every output is as long as in the pass). The pass's throughput over that
ceiling says how much the multi-step stage loses to waiting: chains (each row's next request goes in as
soon as its last finished) vs rounds (one batch per step, every round waits for its slowest sequence).

    .venv/bin/python bench/pipeline.py            # results in bench/results/pipeline.json
"""

from __future__ import annotations

import random
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
    lengths = [(engine.count_tokens(conv), n) for conv, ns in rec.calls for n in ns]
    tokens = sum(n for _, n in lengths)
    return {"mode": mode, "wall_s": round(wall, 1), "output_tokens": tokens, "tok_per_s": round(tokens / wall, 1),
            "prompts_per_min": round(N_PROMPTS / wall * 60, 1), "rows": len(revised.rows),
            "requests": len(lengths), "lengths": lengths}


def ceiling(engine, lengths: list[tuple[int, int]]) -> float:
    """tok/s of one generate call over independent prompts with the same (prompt, output) lengths."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    rng = random.Random(SEED)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(1000, 40000) for _ in range(p)]) for p, _ in lengths]
    params = [SamplingParams(max_tokens=max(o, 1), min_tokens=max(o, 1), ignore_eos=True, temperature=0.8)
              for _, o in lengths]
    engine.llm.reset_prefix_cache()
    start = time.perf_counter()
    outs = engine.llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs) / wall


def main() -> None:
    global N_PROMPTS
    if len(sys.argv) > 1:  # a smaller smoke run: bench/pipeline.py 8
        N_PROMPTS = int(sys.argv[1])
    from cai_pipeline.config import load_config
    from cai_pipeline.engines import make_engine
    from cai_pipeline.report import quiet_libraries

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
        top = ceiling(engine, run.pop("lengths"))
        run.update(ceiling_tok_per_s=round(top, 1), over_ceiling=round(run["tok_per_s"] / top, 3))
        result[mode] = run
        print(f"{mode:6} {run['tok_per_s']:6.1f} tok/s  ceiling {top:6.1f}  ratio {run['over_ceiling']:.3f}"
              f"  {run['prompts_per_min']} prompts/min  ({run['requests']} requests, {run['wall_s']} s)")
    engine.close()
    print(f"saved {save('pipeline', result)}")


if __name__ == "__main__":
    main()
