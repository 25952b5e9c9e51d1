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

from cai_pipeline.audit.logs import read_log
from cai_pipeline.audit.prompts import apply_limit, audit_prompts, candidate_prompts, file_prompts
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

    @property
    def url_key(self) -> str:
        """The setting that holds `url`, for messages about the server."""
        return {"audit.model": "audit.model_url", "audit.baseline": "audit.baseline_url",
                "audit.judge.model": "audit.judge.url"}[self.key]


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
    logs = log_paths(cfg)
    if cfg.audit.prompts and logs:
        raise UserError(f"audit.prompts: the audit's prompts are those of the log ({next(iter(logs.values()))}); "
                        "remove audit.prompts, or filter the log")
    if cfg.audit.prompts:
        file_prompts(cfg.audit.prompts, "audit.prompts", cfg.prompts.system_prompt)
    for side, path in logs.items():
        read_log(path, LOG_KEYS[side])
    for path in cfg.audit.eval_files:
        if not Path(path).expanduser().is_file():
            raise UserError(f"audit.eval_files: {path} does not exist; name prompt files (JSONL/Parquet/CSV)")
    render_checks(assets.templates, cfg)
    found = {role: t for role, t in targets(cfg).items() if role == "judge" or (role in sides_of(cfg) and
                                                                                role not in logs)}
    model = found.get("model")
    if model and model.default and "train" not in planned and not (Path(model.name) / "config.json").exists():
        raise UserError(f"audit.model: the run has no checkpoint ({model.name} is missing); run `cai train CONFIG` "
                        "first, or set audit.model to a model folder, `embedded`, or a served name, or audit.responses "
                        "to a log")
    served = resolve_kind(cfg.engine.kind) == "openai"
    for role, t in found.items():
        if models and t.url is None and not served and not (role == "model" and t.default and "train" in planned):
            check_model(t.name, t.key)


def render_checks(templates, cfg) -> None:
    """The audit's templates render with their variables (a broken edit fails now, not after generation)."""
    from cai_pipeline.audit.compliance import VIOLATION_TEMPLATE
    from cai_pipeline.judging import TEMPLATES

    templates.render(TEMPLATES[cfg.audit.judge.layout, cfg.audit.judge.reasoning], conversation="Human: hi",
                     question="Which is better?", response_a="a", response_b="b")
    if cfg.audit.refusal:
        templates.render("refusal", conversation="Human: hi", response="hello")
    if wants_compliance(cfg):
        templates.render(VIOLATION_TEMPLATE, conversation="Human: hi", response="hello", question="Is it?")


# ---------------------------------------------------------------------------------------------------------
# Sides: a model (generate) or a log (read)

LOG_KEYS = {"model": "audit.responses", "baseline": "audit.baseline_responses"}


def log_paths(cfg) -> dict[str, str]:
    """The sides read from logs, with their files."""
    a = cfg.audit
    return {side: path for side, path in (("model", a.responses), ("baseline", a.baseline_responses)) if path}


def sides_of(cfg) -> tuple[str, ...]:
    """("model",) for a log audited alone (audit.responses, no baseline named): pointwise compliance only."""
    a = cfg.audit
    return ("model",) if a.responses and not (a.baseline or a.baseline_responses) else SIDES


def wants_compliance(cfg) -> bool:
    return cfg.audit.compliance if cfg.audit.compliance is not None else bool(log_paths(cfg))


def read_logs(cfg) -> tuple[dict[str, list[dict]], list[dict]]:
    """{side: response rows} of the sides read from logs, and the rows that could not be read (rejects)."""
    from cai_pipeline.audit.logs import read_log

    out, rejects = {}, []
    for side, path in log_paths(cfg).items():
        rows, bad = read_log(path, LOG_KEYS[side])
        out[side] = [{**r.as_dict(), "side": side, "finish_reason": "logged", "p_refusal": None, "refused": None}
                     for r in rows]
        rejects += [{**r, "key": f"{side}/{r['key']}"} for r in bad]
    return out, rejects


def prompts_for(ctx: RunContext, logs: dict[str, list[dict]]) -> tuple[list[dict], list[dict], dict]:
    """The audit's prompts: those the logs answered, else audit_prompts's candidates; decontaminated
    (decontam.py), then limited to audit.limit. Returns (prompts, rejects, decontamination report)."""
    from cai_pipeline.audit.decontam import decontaminate, reference_sources
    from cai_pipeline.audit.logs import log_prompts

    cfg, layout = ctx.cfg, ctx.store.layout
    rows, rejects = (log_prompts(*logs.values()), []) if logs else candidate_prompts(cfg, layout)
    sources = reference_sources(cfg, layout, ctx.assets.prompts.rows) if cfg.audit.decontaminate != "off" else {}
    rows, dropped, report = decontaminate(rows, sources, cfg.audit.decontaminate_n, cfg.audit.decontaminate)
    return apply_limit(rows, cfg.audit.limit), rejects + dropped, report


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


def length_unit(responses: list[dict]) -> str:
    """Tokens when every response's length is in tokens (generated, or a log with usage), else words for all:
    a length difference must compare like with like."""
    return "tokens" if all(r.get("length_unit", "tokens") == "tokens" for r in responses) else "words"


def make_pairs(responses: list[dict]) -> tuple[list[dict], dict]:
    """The model's i-th response against the baseline's i-th, per prompt (a = model, b = baseline), and the
    counts of what had no partner (logs.match)."""
    from cai_pipeline.audit.logs import match

    words = length_unit(responses) == "words"

    def size(r: dict) -> int:
        return len(r["response"].split()) if words else r["n_tokens"]

    matched, unmatched = match([r for r in responses if r["side"] == "model"],
                               [r for r in responses if r["side"] == "baseline"])
    pairs = [{"pair_id": stable_id("audit", r["prompt_id"], r["sample_idx"]), "prompt_id": r["prompt_id"],
              "tag": r["tag"], "sample_idx": r["sample_idx"], "prompt": r["prompt"], "a": r["response"],
              "b": other["response"], "len_a": size(r), "len_b": size(other)} for r, other in matched]
    return pairs, unmatched


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
    """The models (or the logs read instead), the prompts (held-out ones included), constitution, templates,
    engine settings, and the files decontamination compares against."""
    from cai_pipeline.audit.decontam import training_prompts
    from cai_pipeline.fingerprint import OPERATIONAL, content_sha256
    from cai_pipeline.store import file_digest

    cfg = ctx.cfg
    logs = log_paths(cfg)
    prompts, _ = audit_prompts(cfg, ctx.store.layout) if not logs else ([], [])
    models = {role: describe(t, cfg) for role, t in targets(cfg).items()
              if role == "judge" or (role in sides_of(cfg) and role not in logs)}
    return {"models": models, "logs": {side: file_digest(Path(p).expanduser()) for side, p in logs.items()},
            "prompts_sha256": content_sha256(prompts), "constitution_sha256": ctx.assets.hashes["constitution"],
            "templates": ctx.assets.hashes["templates"],
            "eval_files": {p: file_digest(Path(p).expanduser()) for p in cfg.audit.eval_files},
            "training_prompts_sha256": content_sha256(training_prompts(ctx.store.layout, ctx.assets.prompts.rows))
            if cfg.audit.decontaminate != "off" else None,
            "engine": {k: v for k, v in cfg.engine.model_dump().items() if k not in OPERATIONAL}}


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


def collect(ctx: RunContext, prompts: list[dict], logs: dict[str, list[dict]]) -> tuple[list[dict], list[dict]]:
    """Every side's responses to the audit's prompts: read from its log, or generated by its model."""
    cfg, found = ctx.cfg, targets(ctx.cfg)
    keep = {p["prompt_id"] for p in prompts}
    responses, rejects = [], []
    for side in (s for s in generation_order(found) if s in sides_of(cfg)):
        if side in logs:
            rows = [r for r in logs[side] if r["prompt_id"] in keep]
            _say(f"audit: {len(rows)} responses of the {side} from {log_paths(cfg)[side]}")
        else:
            t = found[side]
            _say(f"audit: {len(prompts)} prompts x {cfg.audit.n} from the {side}, {t.name}")
            rows, failed = generate(ctx.engines.open(f"audit-{side}", t.name, t.url, t.url_key), prompts, cfg, side, t.name)
            rejects += failed
        responses += rows
    return responses, rejects


def score(ctx: RunContext, found: dict, pairs: list[dict], responses: list[dict],
          principles: list, asked: list) -> tuple[list[dict], list[dict], list[dict], dict]:
    """With the judge: the pairs on every principle with a comparison question (`asked`) in both orders, each
    response's compliance on every principle (when wanted; a checkable one by its check) and refusal.
    Returns (judged pairs, compliance rows, rejects, counts of what could not be scored)."""
    from cai_pipeline.audit.compliance import compliance_rows

    cfg, templates, j = ctx.cfg, ctx.assets.templates, found["judge"]
    engine = ctx.engines.open("audit-judge", j.name, j.url, j.url_key)
    judged, rejects, compliance, compliance_failed = [], [], [], Counter()
    if pairs and asked:
        checked = sum(p.check is not None for p in principles)
        _say(f"audit: judging {len(pairs)} pairs on {len(asked)} principles in both orders, {j.name}"
             + (f"; {checked} checked by their checks" if checked else ""))
        judged, rejects = judge(engine, pairs, asked, cfg, templates)
    if wants_compliance(cfg):
        _say(f"audit: compliance of {len(responses)} responses on {len(principles)} principles, {j.name}")
        compliance, compliance_failed = compliance_rows(engine, responses, principles, templates)
    refusal_failed = add_refusals(engine, responses, templates) if cfg.audit.refusal else Counter()
    return judged, compliance, rejects, {"refusal_unscored": dict(refusal_failed),
                                         "compliance_unscored": dict(compliance_failed)}


def add_pointwise(ctx: RunContext, summary, found: dict, compliance: list[dict], principles: list,
                  decontamination: dict) -> None:
    """Into the summary: compliance and drift, the decontamination counts, and (for a DPO/IPO checkpoint of
    this run) the implicit-reward accuracy."""
    from cai_pipeline.audit.implicit import applies, implicit_reward
    from cai_pipeline.audit.summary import Decontamination, ImplicitReward, compliance_summary

    for key, value in compliance_summary(compliance, principles, ctx.cfg).items():
        setattr(summary, key, value)
    summary.decontamination = Decontamination(**decontamination)
    if applies(ctx.cfg, found):
        ctx.engines.close()  # two more models are loaded now: free the judge's memory first
        _say("audit: implicit-reward accuracy of the checkpoint on the held-out preference pairs")
        got = implicit_reward(ctx.cfg, ctx.store.layout, found)
        summary.implicit_reward = ImplicitReward(**got) if got else None


def run(ctx: RunContext) -> dict:
    from cai_pipeline.audit.files import write_audit
    from cai_pipeline.audit.summary import drift_warnings

    cfg, layout = ctx.cfg, ctx.store.layout
    principles = selected_principles(ctx.assets.constitution, cfg.audit.principles)
    logs, rejects = read_logs(cfg)
    log_rejects = Counter(r["reason"] for r in rejects)
    prompts, more, decontamination = prompts_for(ctx, logs)
    rejects += more
    if not prompts:
        raise UserError(f"audit: no prompt left to audit ({decontamination['dropped']} dropped as overlapping the "
                        "training prompts or eval files); set audit.decontaminate=flag to keep them")
    found = targets(cfg)
    responses, failed = collect(ctx, prompts, logs)
    pairs, unmatched = make_pairs(responses) if len(sides_of(cfg)) == 2 else ([], {})
    add_checks(responses, principles)
    asked = [p for p in principles if p.comparison is not None]  # check-only principles need no judge
    judged, compliance, unjudged, unscored = score(ctx, found, pairs, responses, principles, asked)
    rejects += failed + unjudged
    ctx.store.write_rejects("audit", 0, rejects)
    checked = pairs and any(p.check is not None for p in principles)
    if not judged and not compliance and not checked:
        what = "pair could be judged" if pairs or not wants_compliance(cfg) else "response could be scored"
        raise UserError(f"audit: no {what} ({dict(Counter(r['reason'] for r in rejects)) or 'no pairs'}); "
                        f"see {layout.rejects_dir('audit')}")
    counts = {"prompts": len(prompts), "prompts_by_tag": dict(Counter(p["tag"] for p in prompts)),
              "responses": dict(Counter(r["side"] for r in responses)), "pairs": len(pairs), "judged": len(judged),
              "rejected": dict(Counter(r["reason"] for r in rejects)), **unscored, "unmatched": unmatched,
              "log_rejects": dict(log_rejects)}
    names = {role: t.name for role, t in found.items() if role == "judge" or role in sides_of(cfg)}
    summary = summarise(judged, responses, asked, cfg, counts, {**names, **log_paths(cfg)})
    summary.settings.length_unit = length_unit(responses)
    summary.checks = check_rows(check_pairs(pairs, responses), principles, cfg)
    if not judged:
        summary.axes_note = None  # no win rates, so no axes to split them into
    add_pointwise(ctx, summary, found, compliance, principles, decontamination)
    own = run_warnings(cfg, {"audit"})["audit"]  # the judge grading its own model: said where the numbers are
    summary.warnings = ([own] if own else []) + summary.warnings + drift_warnings(summary)
    write_audit(layout, responses, verdict_rows(judged), judged, summary, compliance)
    for warning in summary.warnings:
        _say(f"audit: warning: {warning}")
    o = summary.overall
    return {"pairs": len(judged), "win_rate": o.win_rate, "ci": [o.ci_low, o.ci_high], "lc_win_rate": o.lc_win_rate,
            "refusal_rate_model": o.refusal_rate_model, "refusal_rate_baseline": o.refusal_rate_baseline,
            "compliance": {pid: c.violation_rate for pid, c in summary.compliance.items()},
            "warnings": len(summary.warnings)}


def summary_line(summary: dict) -> tuple[str, str] | None:
    """(out, details) of the stage's manifest summary, for the run's summary table."""
    if summary.get("win_rate") is None:
        rates = summary.get("compliance") or {}
        if not rates:
            return None
        worst = max(rates, key=lambda pid: rates[pid] or 0)
        return f"{len(rates)} principles", f"compliance: highest violation rate {worst} {rates[worst]}"
    lo, hi = summary["ci"]
    return str(summary["pairs"]), (f"win {summary['win_rate']:.3f} [{lo:.3f}, {hi:.3f}], "
                                   f"length-controlled {summary['lc_win_rate']:.3f}")
