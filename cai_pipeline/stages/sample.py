"""Sample: n responses per prompt, the whole shard in one `Engine.generate` call.

With `--reuse OLD`, a prompt whose content key (its messages, the model, the sampling settings, the seed:
rowkeys.sample_key) matches one in the old run takes that run's n samples as they are; only the others go to
the engine."""

from __future__ import annotations

from cai_pipeline.engines.base import Engine, GenParams
from cai_pipeline.reuse import ADDED, RECOMPUTED, REUSED
from cai_pipeline.rng import derive_seed
from cai_pipeline.rowkeys import sample_key
from cai_pipeline.stages.base import StageContext, StageResult, error_reason, make_reject


def params_for(cfg, seed: int) -> GenParams:
    s = cfg.sample
    return GenParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                     stop=tuple(s.stop), seed=seed)


def reusable(ctx: StageContext, prompt: dict, key: str) -> list[dict] | None:
    """The old run's n samples of this prompt when its key matches and none of them was dropped."""
    entry = ctx.reuse.stage("sample").get(prompt["prompt_id"]) if ctx.reuse else None
    if entry and entry["key"] == key and len(entry["rows"]) == ctx.cfg.sample.n:
        return sorted(entry["rows"], key=lambda r: r["sample_idx"])
    return None


def _take(out: StageResult, prompt: dict, comps) -> None:
    if comps[0].finish_reason == "error":
        out.rejects.append(make_reject("sample", prompt["prompt_id"], error_reason(comps[0]),
                                       comps[0].error or "", prompt))
        return
    for idx, comp in enumerate(comps):
        row = {**prompt, "sample_idx": idx, "response": comp.text.strip(),
               "finish_reason": comp.finish_reason, "n_tokens": comp.n_tokens}
        if not row["response"]:
            out.rejects.append(make_reject("sample", f"{prompt['prompt_id']}/{idx}", "empty_response",
                                           f"the model returned nothing ({comp.finish_reason})", row))
        else:
            out.rows.append(row)


def _generate(engine: Engine, prompts: list[dict], ctx: StageContext):
    """One call for the shard; with engine.row_seeds each prompt has its own seed (from its id), so its samples
    do not depend on the other prompts of the call."""
    params = params_for(ctx.cfg, ctx.call_seed("sample"))
    convs = [p["prompt"] for p in prompts]
    if ctx.cfg.engine.row_seeds and getattr(engine, "row_seeds", False):
        return engine.generate(convs, params, seeds=[derive_seed(ctx.seed, "sample", p["prompt_id"]) for p in prompts])
    return engine.generate(convs, params)


def run(inputs: dict[str, list[dict]], engine: Engine, ctx: StageContext) -> StageResult:
    prompts = inputs["prompts"]
    keys = {p["prompt_id"]: sample_key(ctx.cfg, p) for p in prompts}
    reused = {p["prompt_id"]: rows for p in prompts if (rows := reusable(ctx, p, keys[p["prompt_id"]]))}
    todo = [p for p in prompts if p["prompt_id"] not in reused]
    results = _generate(engine, todo, ctx) if todo else []
    computed = dict(zip((p["prompt_id"] for p in todo), results, strict=True))
    out = StageResult(keys={"rows": keys})
    for prompt in prompts:
        pid = prompt["prompt_id"]
        if pid in reused:
            out.rows += reused[pid]
            out.counts[REUSED] += len(reused[pid])
            continue
        before = len(out.rows)
        _take(out, prompt, computed[pid])
        if ctx.reuse:
            old = ctx.reuse.stage("sample").get(pid)
            out.counts[RECOMPUTED if old else ADDED] += len(out.rows) - before
    return out
