"""`cai iterate`: the CAI paper's two phases and further rounds from one config, each gated by the audit.

    round 0 (rounds/00-sl): sample → revise → export → train (loss sft, on the final revisions) → audit vs base
    round r (rounds/0r-rl): from round r−1's checkpoint: sample (n ≥ 2) → sampled pairs → judge → export →
                            train (the config's preference loss) → audit vs round r−1's model → the gate
                            (and, in vs-base/0r-rl, an audit of its model against the base)

Each round is an ordinary run folder made by `run_pipeline` from a config derived from the top one
(`round_config`, a pure function), so resuming after a kill is run_pipeline's: fingerprinted run-scope stages,
finished shards skipped, training resumed from its newest state. This module only plans the rounds, reads
each round's audit, decides whether to go on (`gate`, a pure function) and keeps iterate.json, the record of
what each round produced. A finished round's run_pipeline call is a cheap no-op, so running the same command
again continues where it stopped, and a run the gate stopped stops again at the same round.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from cai_pipeline import __version__, stages
from cai_pipeline.audit.summary import AuditSummary, read_summary
from cai_pipeline.config import RunConfig, format_validation_error
from cai_pipeline.errors import UserError
from cai_pipeline.judge_roles import self_judge_warning
from cai_pipeline.rng import derive_seed
from cai_pipeline.stages import RL, SL
from cai_pipeline.store import PACKAGE, RunLayout, RunStore, atomic_write_json

GATE_LEVEL = 0.5  # the length-controlled win rate's CI must lie above this: better than the previous round
AUDIT_NUMBERS = ("win_rate", "ci_low", "ci_high", "lc_win_rate", "lc_ci_low", "lc_ci_high", "mean_length_model",
                 "mean_length_baseline", "mean_length_change", "refusal_rate_model", "refusal_rate_baseline")


def plan(cfg: RunConfig) -> list[tuple[int, str]]:
    """(index, kind) of every round: the SL round, then iterate.rounds RL rounds."""
    return [(0, SL)] + [(i, RL) for i in range(1, cfg.iterate.rounds + 1)]


def check_top(cfg: RunConfig) -> None:
    """What `cai iterate` sets itself must not be set by hand in the top config."""
    if cfg.iterate.prompts == "slices" and cfg.prompts.part is not None:
        raise UserError(f"prompts.part={cfg.prompts.part}: iterate.prompts=slices gives each round its own part; "
                        "remove prompts.part/prompts.parts, or set iterate.prompts=reseed")
    for key in ("data", "out_dir", "log_dir"):
        if getattr(cfg.train, key) is not None:
            raise UserError(f"train.{key}: each round of `cai iterate` trains on its own data into its own folder; "
                            f"remove train.{key}")


# ---------------------------------------------------------------------------------------------------------
# One round's config: a pure function of the top config and the models before it


def round_config(cfg: RunConfig, index: int, kind: str, previous_model: str, sl_model: str | None = None) -> RunConfig:
    """The run config of round `index` (`kind` sl or rl): its own folder under rounds/, the previous round's
    model as policy, training start and audit baseline (round 0: the config's models), its own prompts, and
    one judge for every round (the config's judge, else its base model), so each gate compares like with like."""
    data = cfg.model_dump()
    data.update(out_dir=str(RunLayout(cfg.out_dir).round(index, kind)), stages=stages.for_round(kind),
                model=previous_model if index else cfg.model)
    data["judge"]["model"] = cfg.judge.model or cfg.model
    train = data["train"]
    train["model"] = cfg.train.model if index == 0 else None  # None: start from `model`, the previous round's
    data["audit"]["baseline"] = previous_model if index else (cfg.train.model or cfg.model)
    data["audit"]["model"] = None  # the round's own checkpoint
    if cfg.iterate.prompts == "slices":
        data["prompts"].update(part=index, parts=cfg.iterate.rounds + 1)
    elif index:
        data["seed"] = derive_seed(cfg.seed, "iterate", index) % 2**32  # a seed numpy takes (config.Seed)
    if kind == SL:
        train.update(loss="sft", reference_model=None)
    else:
        if train["loss"] == "sft":
            train["loss"] = "dpo"
        wants_sl = cfg.iterate.reference == "sl" and train["loss"] in ("dpo", "ipo")
        train["reference_model"] = sl_model if wants_sl else None  # None: the policy's start, the previous model
        data["sample"]["n"] = max(cfg.sample.n, 2)
        data["pairs"].update(sampled=True, revision=False)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, f"round {index:02d}-{kind} (derived config)", RunConfig)) from None


def base_audit_config(cfg: RunConfig, rcfg: RunConfig) -> RunConfig:
    """The audit of a round's checkpoint against the base model, in a run folder of its own (vs-base/NN-kind/):
    the round's settings, only the audit stage, on the prompts of the round's own audit (its held-out prompts
    included), so the round's two audits differ only in the baseline."""
    data = rcfg.model_dump()
    name = RunLayout(rcfg.out_dir).root.name
    data.update(out_dir=str(RunLayout(cfg.out_dir).base_audit(name)), stages=["audit"])
    data["audit"].update(model=str(RunLayout(rcfg.out_dir).checkpoint), baseline=cfg.train.model or cfg.model,
                         prompts=str(RunLayout(rcfg.out_dir).root), limit=None)
    return RunConfig.model_validate(data)


# ---------------------------------------------------------------------------------------------------------
# The gate: a pure function of one audit summary


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_gate_ids(ids: list[str], constitution) -> None:
    """iterate.gate_checks names checkable principles of the constitution."""
    checkable = [p.id for p in constitution.principles if p.check is not None]
    for pid in ids:
        if pid not in checkable:
            raise UserError(f"iterate.gate_checks: {pid!r} is not a checkable principle of {constitution.name}; "
                            f"its checkable principles are {', '.join(checkable) or 'none (add check: to one)'}")


def check_gate(summary: AuditSummary | None, principle_ids: list[str]) -> str | None:
    """Why the round fails the check gate (a named check's pass rate fell: the difference's whole interval is
    below 0), else None."""
    for pid in principle_ids:
        row = summary.checks.get(pid) if summary else None
        if row is None or not _number(row.difference_ci_high):
            return f"the audit has no pass rate for the check of {pid!r}: no evidence it did not fall"
        if row.difference_ci_high < 0:
            return (f"the pass rate of {pid!r} fell: {row.pass_rate_model:.3f} vs {row.pass_rate_baseline:.3f}, "
                    f"difference {row.difference:+.3f} [{row.difference_ci_low:+.3f}, {row.difference_ci_high:+.3f}]")
    return None


def gate(summary: AuditSummary | None, max_length_growth: float, checks: list[str] = ()) -> dict:
    """Go on only if the round beat the previous one by the length-controlled win rate's CI (its low end above
    0.5) and its mean response length grew by at most `max_length_growth` (iterated DPO's known failure is
    verbosity, arXiv 2406.11817). Returns the decision (`passed`), why, and the numbers it used."""
    keys = ("lc_win_rate", "lc_ci_low", "lc_ci_high", "mean_length_model", "mean_length_baseline")
    numbers = {k: getattr(summary.overall, k) if summary else None for k in keys}
    missing = [k for k in keys if not _number(numbers[k])]
    if not missing and numbers["mean_length_baseline"] <= 0:
        missing = ["mean_length_baseline (it is 0)"]
    if missing:
        return {"passed": False, "reason": f"the audit summary lacks {', '.join(missing)}: no evidence of progress",
                **numbers, "length_growth": None, "max_length_growth": max_length_growth}
    growth = numbers["mean_length_model"] / numbers["mean_length_baseline"] - 1
    lc, low, high = numbers["lc_win_rate"], numbers["lc_ci_low"], numbers["lc_ci_high"]
    if low <= GATE_LEVEL:
        passed, reason = False, (f"length-controlled win rate {lc:.3f} [{low:.3f}, {high:.3f}]: its CI is not "
                                 f"above {GATE_LEVEL}")
    elif growth > max_length_growth:
        passed, reason = False, f"mean length grew {growth:+.1%}, more than {max_length_growth:.0%}"
    elif check_gate(summary, list(checks)):
        passed, reason = False, check_gate(summary, list(checks))
    else:
        passed, reason = True, f"length-controlled win rate {lc:.3f} [{low:.3f}, {high:.3f}], length {growth:+.1%}"
    return {"passed": passed, "reason": reason, **numbers, "length_growth": round(growth, 4),
            "max_length_growth": max_length_growth}


def best_round(rounds: list[dict]) -> dict | None:
    """The last round whose gate passed (an ungated round counts as passed), else the SL round."""
    done = [r for r in rounds if r["status"] == "done"]
    passed = [r for r in done if r["gate"] is None or r["gate"]["passed"]]
    if passed:
        return passed[-1]
    return next((r for r in done if r["kind"] == SL), None)


# ---------------------------------------------------------------------------------------------------------
# iterate.json, the top manifest


def audit_numbers(summary: AuditSummary | None) -> dict | None:
    """The overall audit numbers a round is judged by, and each principle's win rates."""
    if summary is None:
        return None
    return {**{k: getattr(summary.overall, k) for k in AUDIT_NUMBERS},
            "principles": {pid: {"win_rate": v.win_rate, "lc_win_rate": v.lc_win_rate}
                           for pid, v in summary.principles.items()},
            "checks": {pid: c.model_dump() for pid, c in summary.checks.items()}}


def read_record(layout: RunLayout) -> dict | None:
    path = layout.iterate_manifest
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: damaged; move it aside and run the same command again (finished rounds are "
                        "kept in rounds/ and are not redone)") from None


def top_manifest(cfg: RunConfig) -> dict:
    """The top folder's manifest.json: marks it as one of our run folders (so the report, `cai compare` and
    the foreign-folder check know it); its rounds are run folders of their own."""
    return {"package": PACKAGE, "version": __version__, "kind": "iterate",
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "out_dir": cfg.out_dir,
            "model": cfg.model, "judge_model": cfg.judge.model or cfg.model, "seed": cfg.seed,
            "config": cfg.model_dump(), "stages": {}}


def round_entry(index: int, kind: str, rcfg: RunConfig) -> dict:
    layout = RunLayout(rcfg.out_dir)
    return {"index": index, "name": layout.root.name, "kind": kind, "status": "running", "out_dir": rcfg.out_dir,
            "started_from": rcfg.train.model or rcfg.model, "baseline": rcfg.audit.baseline,
            "reference_model": rcfg.train.reference_model, "model": None, "audit": None, "audit_vs_base": None,
            "gate": None}


def write_record(layout: RunLayout, record: dict, cfg: RunConfig) -> None:
    best = best_round(record["rounds"])
    record.update(config=cfg.model_dump(), best=None if best is None else {"round": best["name"], "model": best["model"]},
                  updated=datetime.now(UTC).isoformat(timespec="seconds"))
    atomic_write_json(layout.iterate_manifest, record)


# ---------------------------------------------------------------------------------------------------------
# The rounds


def check_summary(checks: dict) -> str:
    """Each check's pass rate, model vs baseline, for the round's line."""
    parts = [f"{pid} {c['pass_rate_model']:.2f} vs {c['pass_rate_baseline']:.2f}" for pid, c in checks.items()
             if _number(c.get("pass_rate_model"))]
    return f", checks pass {'; '.join(parts)}" if parts else ""


def round_line(entry: dict) -> str:
    """One line per round for the terminal: its audit against its baseline and the gate's decision."""
    a = entry.get("audit") or {}

    def num(key: str) -> str:
        return f"{a[key]:.3f}" if _number(a.get(key)) else "—"

    lm, lb = a.get("mean_length_model"), a.get("mean_length_baseline")
    length = f"{lm / lb - 1:+.1%}" if _number(lm) and _number(lb) and lb > 0 else "—"
    g, b = entry.get("gate"), entry.get("audit_vs_base")
    decision = "not gated" if g is None else ("pass" if g["passed"] else "stop") + f" ({g['reason']})"
    vs_base = "" if not b or not _number(b.get("lc_win_rate")) else (
        f", vs base {b['lc_win_rate']:.3f} [{b['lc_ci_low']:.3f}, {b['lc_ci_high']:.3f}]")
    return (f"{entry['name']}: LC win rate {num('lc_win_rate')} [{num('lc_ci_low')}, {num('lc_ci_high')}] vs "
            f"{entry['baseline']}{vs_base}, length {length}, benign refusal {num('refusal_rate_model')} (baseline "
            f"{num('refusal_rate_baseline')}){check_summary(a.get('checks') or {})}, gate: {decision}")


def run_round(cfg: RunConfig, rcfg: RunConfig, entry: dict, verbose: bool, report: bool) -> None:
    """Run (or finish, or re-check) one round, its audit against the base, and its gate; fill in `entry`."""
    from cai_pipeline.pipeline import run_pipeline

    run_pipeline(rcfg, verbose=verbose, summary=False, report=report, warn=False)  # run_iterate said it once
    layout = RunLayout(rcfg.out_dir)
    summary = read_summary(layout.audit_summary)
    entry.update(model=str(layout.checkpoint), audit=audit_numbers(summary))
    if entry["kind"] == RL and cfg.iterate.audit_base:
        bcfg = base_audit_config(cfg, rcfg)
        run_pipeline(bcfg, verbose=verbose, summary=False, report=report, warn=False)
        entry["audit_vs_base"] = audit_numbers(read_summary(RunLayout(bcfg.out_dir).audit_summary))
    if entry["kind"] == RL and cfg.iterate.gate:
        entry["gate"] = gate(summary, cfg.iterate.max_length_growth, cfg.iterate.gate_checks)
    entry["status"] = "done"


def run_iterate(cfg: RunConfig, *, verbose: bool = False, report: bool = True,
                echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) every round of `cfg` under cfg.out_dir/rounds/; returns iterate.json's record."""
    from cai_pipeline.assets import load_assets
    from cai_pipeline.pipeline import check_folder

    check_top(cfg)
    for index, kind in plan(cfg):  # every derived config, and its prompts, valid before anything runs
        rcfg = round_config(cfg, index, kind, cfg.model, cfg.model)
        check_gate_ids(cfg.iterate.gate_checks, load_assets(rcfg).constitution)
        if kind == RL and cfg.iterate.audit_base:
            base_audit_config(cfg, rcfg)
    top = RunStore(cfg.out_dir)
    check_folder(top, "iterate")
    top.check_writable()
    # every round's judge is the base model (round_config) and every round's policy descends from it
    own = self_judge_warning(cfg.judge.model or cfg.model, cfg.model, cfg.train.model or cfg.model)
    if own:
        print(f"warning: {own}", file=sys.stderr)
    with top.lock():
        manifest = top.read_manifest() or top_manifest(cfg)
        top.write_manifest({**manifest, "judge_warnings": {"iterate": own}})
        before = {r["name"]: r["status"] for r in (read_record(top.layout) or {}).get("rounds", [])}
        record = {"package": PACKAGE, "rounds": [], "stopped": None, "status": "running", "judge_warning": own}
        previous, sl_model = cfg.model, None
        for index, kind in plan(cfg):
            rcfg = round_config(cfg, index, kind, previous, sl_model)
            entry = round_entry(index, kind, rcfg)
            entry["status"] = "done" if before.get(entry["name"]) == "done" else "running"  # while it is re-checked
            record["rounds"].append(entry)
            write_record(top.layout, record, cfg)
            run_round(cfg, rcfg, entry, verbose, report)
            write_record(top.layout, record, cfg)
            echo(round_line(entry))
            if entry["gate"] is not None and not entry["gate"]["passed"]:
                record["stopped"] = {"round": entry["name"], "reason": entry["gate"]["reason"]}
                break
            previous = entry["model"]
            sl_model = sl_model or entry["model"]
        record["status"] = "stopped" if record["stopped"] else "done"
        write_record(top.layout, record, cfg)
    if report:
        from cai_pipeline.report import write_report

        write_report(top.root)
    return record
