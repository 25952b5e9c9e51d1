"""Sample: n responses per prompt, the whole shard in one `Engine.generate` call."""

from __future__ import annotations

from cai_pipeline.engines.base import Engine, GenParams
from cai_pipeline.stages.base import StageContext, StageResult, error_reason, make_reject


def params_for(cfg, seed: int) -> GenParams:
    s = cfg.sample
    return GenParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                     stop=tuple(s.stop), seed=seed)


def run(inputs: dict[str, list[dict]], engine: Engine, ctx: StageContext) -> StageResult:
    prompts = inputs["prompts"]
    results = engine.generate([p["prompt"] for p in prompts], params_for(ctx.cfg, ctx.call_seed("sample")))
    out = StageResult()
    for prompt, comps in zip(prompts, results, strict=True):
        if comps[0].finish_reason == "error":
            out.rejects.append(make_reject("sample", prompt["prompt_id"], error_reason(comps[0]),
                                           comps[0].error or "", prompt))
            continue
        for idx, comp in enumerate(comps):
            row = {**prompt, "sample_idx": idx, "response": comp.text.strip(),
                   "finish_reason": comp.finish_reason, "n_tokens": comp.n_tokens}
            if not row["response"]:
                out.rejects.append(make_reject("sample", f"{prompt['prompt_id']}/{idx}", "empty_response",
                                               f"the model returned nothing ({comp.finish_reason})", row))
            else:
                out.rows.append(row)
    return out
