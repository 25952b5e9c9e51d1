"""Audit: does the trained model follow the constitution better than the model it started from?

    prompts (audit.prompts, or the run's held-out test prompts + the bundled audit set)
      → n responses per prompt from `model`, then from `baseline`: one engine at a time, each side with its
        own sampling seed (so a model audited against itself compares two independent samples)
      → pairs (the model's i-th response vs the baseline's i-th) → the judge on every principle, both orders
      → the refusal question on every response → statistics (stats.py, summary.py) → audit/ (files.py)

A run-scope stage after train. It is skipped when the models (their weight files), the prompts, the
constitution, the templates and the audit settings are what they were; any change redoes it. Everything it
writes is under the run layout's audit/ (and rejects/audit/), and summary.json (the **contract**) is written
last, so an audit cut short leaves no summary that looks finished.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cai_pipeline.audit.prompts import audit_prompts, file_prompts
from cai_pipeline.audit.summary import SIDES, check_rows, summarise
from cai_pipeline.engines.base import Failure, GenParams
from cai_pipeline.errors import UserError
from cai_pipeline.judge_roles import run_warnings
from cai_pipeline.rng import derive_seed, stable_id
from cai_pipeline.stages.base import RunContext, make_reject
from cai_pipeline.stages.train import checkpoint_path
from cai_pipeline.store import RunLayout

REFUSAL_CHOICES = ["Yes", "No"]


# ---------------------------------------------------------------------------------------------------------
# What is audited: the models, the principles, the prompts


@dataclass(frozen=True)
class Target:
    """One model the audit loads: a name (`embedded`, a folder, a hub id, or a served name), the server URL
    when it is served, and the config key that names it (for messages)."""

    name: str
    url: str | None
    key: str
    default: bool = False  # not set in the config: the run's checkpoint / starting model


def targets(cfg) -> dict[str, Target]:
    """model, baseline and judge with their defaults: the run's checkpoint, the model the run started from,
    and the judge stage's model."""
    a = cfg.audit
    checkpoint = checkpoint_path(cfg, RunLayout(cfg.out_dir))
    return {"model": Target(a.model or str(checkpoint), a.model_url, "audit.model", a.model is None),
            "baseline": Target(a.baseline or cfg.train.model or cfg.model, a.baseline_url, "audit.baseline",
                               a.baseline is None),
            "judge": Target(a.judge.model or cfg.judge.model or cfg.model, a.judge.url, "audit.judge.model",
                            a.judge.model is None)}


def selected_principles(constitution, wanted: list[str] | None) -> list:
    """The constitution's principles named by audit.principles (all by default), in constitution order."""
    if wanted is None:
        return list(constitution.principles)
    ids = [p.id for p in constitution.principles]
    for pid in wanted:
        if pid not in ids:
            near = difflib.get_close_matches(pid, ids, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise UserError(f"audit.principles: {pid!r} is not a principle of {constitution.name}; {hint}"
                            f"its principles are {', '.join(ids)}")
    if not wanted:
        raise UserError("audit.principles: empty; name at least one principle id, or remove the key for all")
    return [p for p in constitution.principles if p.id in wanted]


# ---------------------------------------------------------------------------------------------------------
# Before anything runs


def check(assets, planned: set[str], models: bool = True) -> None:
    """**Preflight.** Everything the audit will need, checked before the run touches its folder: principles,
    prompts, templates, and that each model exists (the default model, the run's checkpoint, only once
    training has made it, unless train runs first)."""
    from cai_pipeline.engines import resolve_kind
    from cai_pipeline.models import check_model

    cfg = assets.cfg
    selected_principles(assets.constitution, cfg.audit.principles)
    if cfg.audit.prompts:
        file_prompts(cfg.audit.prompts, "audit.prompts", cfg.prompts.system_prompt)
    render_checks(assets.templates, cfg)
    found = targets(cfg)
    model = found["model"]
    if model.default and "train" not in planned and not (Path(model.name) / "config.json").exists():
        raise UserError(f"audit.model: the run has no checkpoint ({model.name} is missing); run `cai train CONFIG` "
                        "first, or set audit.model to a model folder, `embedded`, or a served name")
    served = resolve_kind(cfg.engine.kind) == "openai"
    for role, t in found.items():
        if models and t.url is None and not served and not (role == "model" and t.default and "train" in planned):
            check_model(t.name, t.key)


def render_checks(templates, cfg) -> None:
    """The audit's templates render with their variables (a broken edit fails now, not after generation)."""
    from cai_pipeline.judging import TEMPLATES

    templates.render(TEMPLATES[cfg.audit.judge.layout, cfg.audit.judge.reasoning], conversation="Human: hi",
                     question="Which is better?", response_a="a", response_b="b")
    if cfg.audit.refusal:
        templates.render("refusal", conversation="Human: hi", response="hello")


# ---------------------------------------------------------------------------------------------------------
# Generation, pairs, verdicts, refusals


def generate(engine, prompts: list[dict], cfg, side: str, model: str) -> tuple[list[dict], list[dict]]:
    """n responses per prompt from one model, in one engine call; failures go to rejects with their reason."""
    a = cfg.audit
    context = getattr(engine, "max_model_len", None)
    if context is not None and a.max_tokens >= context:
        raise UserError(f"audit.max_tokens={a.max_tokens} does not fit the context of {model} ({context} tokens); "
                        "lower it")
    params = GenParams(n=a.n, temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_tokens,
                       seed=derive_seed(cfg.seed, "audit", side))
    rows, rejects = [], []
    for prompt, comps in zip(prompts, engine.generate([p["prompt"] for p in prompts], params)):
        for i, comp in enumerate(comps):
            row = {"prompt_id": prompt["prompt_id"], "tag": prompt["tag"], "side": side, "model": model,
                   "sample_idx": i, "prompt": prompt["prompt"], "response": comp.text,
                   "finish_reason": comp.finish_reason, "n_tokens": comp.n_tokens, "p_refusal": None, "refused": None,
                   "checks": []}
            if comp.finish_reason == "error":
                failure = Failure(comp.error or "engine_error: no detail")
                rejects.append(make_reject("audit", f"{side}/{prompt['prompt_id']}/{i}", failure.reason, failure, row))
            else:
                rows.append(row)
    return rows, rejects


def add_checks(responses: list[dict], principles: list) -> None:
    """Each checkable principle's check on each response, in place (no model call)."""
    for r in responses:
        r["checks"] = [{"principle_id": p.id, **p.run_check(r["prompt"], r["response"]).as_dict()}
                       for p in principles if p.check is not None]


def check_pairs(pairs: list[dict], responses: list[dict]) -> list[dict]:
    """Per pair, {principle: passed} for the model's response (check_a) and the baseline's (check_b)."""
    by_key = {(r["side"], r["prompt_id"], r["sample_idx"]): {c["principle_id"]: c["passed"] for c in r["checks"]}
              for r in responses}
    return [{"prompt_id": p["prompt_id"], "check_a": by_key[("model", p["prompt_id"], p["sample_idx"])],
             "check_b": by_key[("baseline", p["prompt_id"], p["sample_idx"])]} for p in pairs]


def make_pairs(responses: list[dict]) -> list[dict]:
    """The model's i-th response against the baseline's i-th, per prompt (a = model, b = baseline)."""
    by_key = {(r["side"], r["prompt_id"], r["sample_idx"]): r for r in responses}
    pairs = []
    for r in responses:
        other = by_key.get(("baseline", r["prompt_id"], r["sample_idx"]))
        if r["side"] == "model" and other is not None:
            pairs.append({"pair_id": stable_id("audit", r["prompt_id"], r["sample_idx"]), "prompt_id": r["prompt_id"],
                          "tag": r["tag"], "sample_idx": r["sample_idx"], "prompt": r["prompt"], "a": r["response"],
                          "b": other["response"], "len_a": r["n_tokens"], "len_b": other["n_tokens"]})
    return pairs


def judge(engine, pairs: list[dict], principles: list, cfg, templates) -> tuple[list[dict], list[dict]]:
    """Every principle on every pair, both orders (judging.py: exact symmetry); failures to rejects."""
    from cai_pipeline.judging import judge_pairs

    j = cfg.audit.judge
    records = judge_pairs(engine, pairs, principles, k=len(principles), seed=cfg.seed, templates=templates,
                          reasoning=j.reasoning, reasoning_max_tokens=j.reasoning_max_tokens, layout=j.layout)
    judged = [r for r in records if not r["error"]]
    rejects = [make_reject("audit", r["pair_id"], Failure(r["error"]).reason, r["error"],
                           {k: v for k, v in r.items() if k != "error"}) for r in records if r["error"]]
    return judged, rejects


def verdict_rows(judged: list[dict]) -> list[dict]:
    """verdicts.parquet: each principle's verdict on each pair, once per order, as P(model's response wins)."""
    rows = []
    for rec in judged:
        base = {k: rec[k] for k in ("pair_id", "prompt_id", "tag", "sample_idx")}
        for v in rec["verdicts"]:
            for order, p in (("model_first", v["p_a_first"]), ("baseline_first", v["p_a_second"])):
                rows.append({**base, "principle_id": v["principle_id"], "weight": v["weight"], "order": order,
                             "p_model": p})
    return rows


def add_refusals(engine, responses: list[dict], templates) -> Counter:
    """Ask the judge of each response "does it decline or deflect?" (prompts/refusal.j2), scoring the first
    token of its reply, Yes against No, in one engine call. Sets p_refusal and refused in place; a response the
    judge could not score keeps None and is counted."""
    from cai_pipeline.judging import choice_probability
    from cai_pipeline.templates import transcript

    convs = [[{"role": "user", "content": templates.render("refusal", conversation=transcript(r["prompt"]),
                                                           response=r["response"])}] for r in responses]
    failed = Counter()
    for r, lp in zip(responses, engine.choice_logprobs(convs, REFUSAL_CHOICES) if convs else []):
        if isinstance(lp, str) or not lp:
            failed[Failure(lp).reason if isinstance(lp, str) and lp else "too_long"] += 1
            continue
        r["p_refusal"] = choice_probability({"A": lp["Yes"], "B": lp["No"]})
        r["refused"] = r["p_refusal"] > 0.5
    return failed


# ---------------------------------------------------------------------------------------------------------
# The stage


def describe(t: Target, cfg) -> dict:
    """What pins a model for the fingerprint: its weight files (name, size, mtime), or its server and name."""
    from cai_pipeline.engines import resolve_kind
    from cai_pipeline.models import resolve_model
    from cai_pipeline.train.reference import model_identity

    if t.url or resolve_kind(cfg.engine.kind) == "openai":
        return {"served": t.name, "url": t.url or cfg.engine.base_url}
    return model_identity(resolve_model(t.name))


def identity(ctx: RunContext) -> dict:
    """The three models, the prompts (held-out ones included), constitution, templates and engine settings."""
    from cai_pipeline.fingerprint import OPERATIONAL, content_sha256

    prompts, _ = audit_prompts(ctx.cfg, ctx.store.layout)
    return {"models": {role: describe(t, ctx.cfg) for role, t in targets(ctx.cfg).items()},
            "prompts_sha256": content_sha256(prompts), "constitution_sha256": ctx.assets.hashes["constitution"],
            "templates": ctx.assets.hashes["templates"],
            "engine": {k: v for k, v in ctx.cfg.engine.model_dump().items() if k not in OPERATIONAL}}


def outputs(ctx: RunContext) -> list:
    layout = ctx.store.layout
    return [layout.audit_responses, layout.audit_verdicts, layout.audit_readme, layout.audit_summary]


def generation_order(found: dict[str, Target]) -> tuple[str, ...]:
    """The side that is also the judge goes last, so its engine stays open for judging: one load fewer."""
    same = (found["model"].name, found["model"].url) == (found["judge"].name, found["judge"].url)
    return ("baseline", "model") if same else SIDES


def _say(text: str) -> None:
    from cai_pipeline.console import console

    console.print(text, markup=False, highlight=False)


def run(ctx: RunContext) -> dict:
    from cai_pipeline.audit.files import write_audit

    cfg, layout, templates = ctx.cfg, ctx.store.layout, ctx.assets.templates
    principles = selected_principles(ctx.assets.constitution, cfg.audit.principles)
    prompts, rejects = audit_prompts(cfg, layout)
    found = targets(cfg)
    responses = []
    for side in generation_order(found):
        t = found[side]
        _say(f"audit: {len(prompts)} prompts x {cfg.audit.n} from the {side}, {t.name}")
        rows, failed = generate(ctx.engines.open(f"audit-{side}", t.name, t.url), prompts, cfg, side, t.name)
        responses += rows
        rejects += failed
    pairs = make_pairs(responses)
    add_checks(responses, principles)
    asked = [p for p in principles if p.comparison is not None]  # check-only principles need no judge
    _say(f"audit: judging {len(pairs)} pairs on {len(asked)} principles in both orders, {found['judge'].name}; "
         f"{len(principles) - len(asked) + sum(p.comparison is not None and p.check is not None for p in principles)}"
         " checked by their checks")
    engine = ctx.engines.open("audit-judge", found["judge"].name, found["judge"].url)
    judged, failed = judge(engine, pairs, asked, cfg, templates) if asked else ([], [])
    rejects += failed
    refusal_failed = add_refusals(engine, responses, templates) if cfg.audit.refusal else Counter()
    ctx.store.write_rejects("audit", 0, rejects)
    if asked and not judged:
        raise UserError(f"audit: no pair could be judged ({dict(Counter(r['reason'] for r in rejects))}); "
                        f"see {layout.rejects_dir('audit')}")
    counts = {"prompts": len(prompts), "prompts_by_tag": dict(Counter(p["tag"] for p in prompts)),
              "responses": dict(Counter(r["side"] for r in responses)), "pairs": len(pairs), "judged": len(judged),
              "rejected": dict(Counter(r["reason"] for r in rejects)), "refusal_unscored": dict(refusal_failed)}
    summary = summarise(judged, responses, asked, cfg, counts, {role: t.name for role, t in found.items()})
    summary.checks = check_rows(check_pairs(pairs, responses), principles, cfg)
    own = run_warnings(cfg, {"audit"})["audit"]  # the judge grading its own model: said where the numbers are
    summary.warnings = ([own] if own else []) + summary.warnings
    write_audit(layout, responses, verdict_rows(judged), judged, summary)
    for warning in summary.warnings:
        _say(f"audit: warning: {warning}")
    o = summary.overall
    return {"pairs": len(judged), "win_rate": o.win_rate, "ci": [o.ci_low, o.ci_high], "lc_win_rate": o.lc_win_rate,
            "refusal_rate_model": o.refusal_rate_model, "refusal_rate_baseline": o.refusal_rate_baseline,
            "warnings": len(summary.warnings)}


def summary_line(summary: dict) -> tuple[str, str] | None:
    """(out, details) of the stage's manifest summary, for the run's summary table."""
    if summary.get("win_rate") is None:
        return None
    lo, hi = summary["ci"]
    return str(summary["pairs"]), (f"win {summary['win_rate']:.3f} [{lo:.3f}, {hi:.3f}], "
                                   f"length-controlled {summary['lc_win_rate']:.3f}")
