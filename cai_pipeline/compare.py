"""`cai compare RUN_A RUN_B`: what changed between two runs — typically the same prompts and seed under two
versions of a constitution. The constitutions' differences (from each run's snapshot), per-stage counts,
revision behaviour, the preference data, the two audits side by side where the runs have them, and a few
side-by-side final revisions of the same rows. `cai compare RUN` on a `cai iterate` folder (or two of them)
shows its rounds side by side: each round's audit against its baseline and the gate's decision."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cai_pipeline.audit.summary import AuditSummary, Score, read_summary
from cai_pipeline.errors import UserError
from cai_pipeline.store import RunStore, open_run


def _rate(hits: int, total: int) -> str:
    return f"{hits / total:.2f}" if total else "—"


def run_stats(store: RunStore) -> dict[str, str]:
    """The numbers worth comparing, as display strings keyed by a stable label."""
    manifest = store.read_manifest()
    stats = {"model": manifest.get("model", ""), "seed": str(manifest.get("seed", "")),
             "constitution sha256": manifest.get("constitution_sha256", "")[:12]}
    for name, s in manifest.get("stages", {}).items():
        if "shards_total" not in s:  # a run-scope stage: no rows in and out
            continue
        stats[f"{name}: out / in"] = f"{s.get('out', 0)} / {s.get('in', 0)}"
        stats[f"{name}: rejected"] = str(sum(s.get("rejected", {}).values()))
    revised = store.read_stage("revise")
    rounds = [r for row in revised for r in row["rounds"]]
    stats["revise: preamble cut rate"] = _rate(sum(r["cleaned"] for r in rounds), len(rounds))
    stats["revise: kept-previous rate"] = _rate(sum(r["kept_previous"] is not None for r in rounds), len(rounds))
    stats["revise: final changed rate"] = _rate(sum(r["final"] != r["initial"] for r in revised), len(revised))
    if revised:
        stats["revise: words initial → final"] = (
            f"{statistics.fmean(len(r['initial'].split()) for r in revised):.0f} → "
            f"{statistics.fmean(len(r['final'].split()) for r in revised):.0f}")
    used = Counter(r["principle_id"] for r in rounds)
    stats["revise: most used principles"] = ", ".join(f"{k} {v}" for k, v in used.most_common(3))
    judged = store.read_stage("judge")
    revision_pairs = [p for p in judged if p["origin"] == "revision"]
    stats["judge: revision preferred"] = _rate(sum(p["p_a"] > 0.5 for p in revision_pairs), len(revision_pairs))
    if judged:
        stats["judge: mean margin"] = f"{statistics.fmean(abs(p['p_a'] - 0.5) for p in judged):.3f}"
    return stats


def side_by_side(a: RunStore, b: RunStore, limit: int) -> list[tuple[str, str, str, str]]:
    """(prompt, final in A, final in B) for rows both runs revised, same (prompt_id, sample_idx)."""
    rows_b = {(r["prompt_id"], r["sample_idx"]): r for r in b.read_stage("revise")}
    out = []
    for r in a.read_stage("revise"):
        other = rows_b.get((r["prompt_id"], r["sample_idx"]))
        if other is not None and other["final"] != r["final"]:
            out.append((r["prompt"][-1]["content"], r["initial"], r["final"], other["final"]))
        if len(out) >= limit:
            break
    return out


def constitution_changes(a: RunStore, b: RunStore) -> list[str]:
    from cai_pipeline.constitution import load_constitution
    from cai_pipeline.constitution_diff import diff_constitutions

    paths = [s.layout.constitution for s in (a, b)]
    if not all(p.exists() for p in paths):
        return ["(a run has no constitution snapshot; made before snapshots were kept)"]
    return diff_constitutions(load_constitution(paths[0]), load_constitution(paths[1]))


def read_audit(store: RunStore) -> AuditSummary | None:
    return read_summary(store.layout.audit_summary)


def _audit_cell(row: Score | None) -> str:
    if row is None or row.win_rate is None:
        return "—"
    sc = "" if row.sc_win_rate is None else f"  SC {100 * row.sc_win_rate:.1f}"
    return f"{100 * row.win_rate:.1f} [{100 * row.ci_low:.1f}, {100 * row.ci_high:.1f}]  LC {100 * row.lc_win_rate:.1f}{sc}"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def check_cell(c) -> str:
    """A checkable principle: pass % of model vs baseline and the difference in points with its CI."""
    if c is None:
        return "—"
    c = c if isinstance(c, dict) else c.model_dump()
    if c.get("pass_rate_model") is None:
        return "—"
    return (f"pass {_pct(c['pass_rate_model'])} vs {_pct(c['pass_rate_baseline'])}, "
            f"{100 * c['difference']:+.1f} [{100 * c['difference_ci_low']:+.1f}, {100 * c['difference_ci_high']:+.1f}]")


def audit_rows(a: AuditSummary | None, b: AuditSummary | None) -> list[tuple[str, str, str]]:
    """(label, run A, run B): win % [CI] and length-controlled, overall, per axis, per principle; refusal
    rates and the length change. A row one audit lacks shows —."""
    axes = {"a": a.axes if a else {}, "b": b.axes if b else {}}
    principles = {"a": a.principles if a else {}, "b": b.principles if b else {}}
    rows = [("overall", _audit_cell(a and a.overall), _audit_cell(b and b.overall))]
    for name in dict.fromkeys([*axes["a"], *axes["b"]]):
        rows.append((f"axis: {name}", _audit_cell(axes["a"].get(name)), _audit_cell(axes["b"].get(name))))
    for pid in dict.fromkeys([*principles["a"], *principles["b"]]):
        rows.append((pid, _audit_cell(principles["a"].get(pid)), _audit_cell(principles["b"].get(pid))))
    checks = {"a": a.checks if a else {}, "b": b.checks if b else {}}
    for pid in dict.fromkeys([*checks["a"], *checks["b"]]):
        rows.append((f"check: {pid}", check_cell(checks["a"].get(pid)), check_cell(checks["b"].get(pid))))
    for key, label in (("refusal_rate_model", "refusal %, benign: model"),
                       ("refusal_rate_baseline", "refusal %, benign: baseline"),
                       ("mean_length_change", "mean length change (tokens)")):
        show = (lambda x: "—" if x is None else f"{x:+}") if key == "mean_length_change" else _pct
        rows.append((label, *(show(getattr(s.overall, key) if s else None) for s in (a, b))))
    compliance = {"a": a.compliance if a else {}, "b": b.compliance if b else {}}
    for pid in dict.fromkeys([*compliance["a"], *compliance["b"]]):  # pointwise: each audit's violation rate
        cells = [compliance[k].get(pid) for k in ("a", "b")]
        rows.append((f"violation %: {pid}", *("—" if c is None else f"{_pct(c.violation_rate)} "
                                              f"[{_pct(c.ci_low)}, {_pct(c.ci_high)}]" for c in cells)))
    return rows


def print_audits(console: Console, a: AuditSummary | None, b: AuditSummary | None, names: tuple[str, str]) -> None:
    table = Table(title="Audit: win % of model over baseline [CI], length-controlled (LC), style-controlled (SC)",
                  title_justify="left")
    for col in ("", *names):
        table.add_column(col)
    for label, va, vb in audit_rows(a, b):
        table.add_row(escape(label), escape(va), escape(vb) if vb == va else f"[bold]{escape(vb)}[/bold]")
    console.print(table)


def _num(x) -> str:
    return "—" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def print_edit_effects(console: Console, a: RunStore, b: RunStore, examples: int) -> list:
    """First: what the constitution edit changed, per principle (edit_effects.py), and B's reuse of A's rows."""
    from cai_pipeline.edit_effects import edit_effects

    effects = edit_effects(a, b, examples=min(examples, 2))
    reuse = (b.read_manifest() or {}).get("reuse") or {}
    if not effects and not reuse:
        return effects
    console.print("[bold]What the edit changed[/bold]")
    for e in effects:
        console.print(f"  [bold]{escape(e.principle_id)}[/bold] ({escape(e.change)}): revise chains that drew it "
                      f"{e.chains}, changed {e.chains_changed}; its verdicts on pairs both runs judged {e.verdicts}, "
                      f"moved {e.verdicts_moved}, flipped {e.verdicts_flipped}", highlight=False)
        for label, key in (("revision preferred", "revision_preferred"), ("mean p(revision)", "mean_p_revision"),
                           ("order-consistent", "consistent")):
            before, after = e.judge_before.get(key), e.judge_after.get(key)
            if before is not None or after is not None:
                console.print(f"    judge, {label}: {_num(before)} → {_num(after)}", highlight=False)
        if e.audit_before is not None or e.audit_after is not None:
            console.print(f"    audit win rate: {_num(e.audit_before)} → {_num(e.audit_after)}", highlight=False)
        for ex in e.examples:
            console.print(f"    [dim]prompt[/dim]: {escape(ex['prompt'][:200])} (round {ex['round']})", highlight=False)
            for side in ("before", "after"):
                for part in ("critique", "revision"):
                    console.print(f"      [dim]{side} {part}[/dim]: {escape(ex[side][part][:300])}", highlight=False)
    for stage, r in reuse.items():
        extra = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("source", "reused", "recomputed", "added",
                                                                          "dropped"))
        console.print(f"  {stage}: reused {r['reused']}, recomputed {r['recomputed']}, added {r['added']}, "
                      f"dropped {r['dropped']} (from {escape(r['source'])})" + (f"; {extra}" if extra else ""),
                      highlight=False)
    return effects


def read_rounds(store: RunStore) -> list[dict]:
    """`cai iterate`'s rounds (iterate.json), [] for a run without them."""
    path = store.layout.iterate_manifest
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["rounds"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: not an iterate record; run `cai iterate` on the folder again to rewrite it") from None


def round_row(r: dict) -> tuple[str, ...]:
    """round, kind, status, LC win % [CI] over its baseline, and over the base model, length change, refusal %
    model / baseline, gate."""
    a = r.get("audit") or {}
    lm, lb = a.get("mean_length_model"), a.get("mean_length_baseline")
    length = f"{lm / lb - 1:+.1%}" if lm is not None and lb else "—"
    refusal = f"{_pct(a.get('refusal_rate_model'))} / {_pct(a.get('refusal_rate_baseline'))}"
    g = r.get("gate")
    gate = "not gated" if g is None else ("pass" if g["passed"] else "stop")
    return (str(r.get("name")), str(r.get("kind")), str(r.get("status")), _lc_cell(a),
            _lc_cell(r.get("audit_vs_base") or {}), length, refusal, gate)


def _lc_cell(a: dict) -> str:
    """An audit's length-controlled win % and its CI, "—" without one."""
    if a.get("lc_win_rate") is None:
        return "—"
    return f"{100 * a['lc_win_rate']:.1f} [{_pct(a.get('lc_ci_low'))}, {_pct(a.get('lc_ci_high'))}]"


def principle_rows(rounds: list[dict]) -> list[tuple[str, ...]]:
    """One row per principle: its audit win % in each round ("—" where a round has no audit of it). A table of
    its own, principles down and rounds across, so it stays legible with 18 principles in 80 columns."""
    by_round = [((r.get("audit") or {}).get("principles") or {}) for r in rounds]
    ids = list(dict.fromkeys(pid for principles in by_round for pid in principles))
    return [(pid, *(_pct((p.get(pid) or {}).get("win_rate")) for p in by_round)) for pid in ids]


def check_round_rows(rounds: list[dict]) -> list[tuple[str, ...]]:
    """One row per checkable principle: its check cell in each round's audit, then in each audit vs the base."""
    audits = [(r.get("audit") or {}).get("checks") or {} for r in rounds]
    audits += [(r.get("audit_vs_base") or {}).get("checks") or {} for r in rounds if r.get("audit_vs_base")]
    ids = list(dict.fromkeys(pid for checks in audits for pid in checks))
    return [(pid, *(check_cell(checks.get(pid)) for checks in audits)) for pid in ids]


def print_rounds(console: Console, store: RunStore, title: str) -> int:
    rounds = read_rounds(store)
    if not rounds:
        return 0
    table = Table(title=f"Rounds of {title}: each audited against the round before (the SL round: the base)",
                  title_justify="left")
    for col in ("round", "kind", "status", "LC win % [CI]", "LC vs base", "length", "benign refusal % model / base",
                "gate"):
        table.add_column(col)
    for r in rounds:
        table.add_row(*(escape(x) for x in round_row(r)))
    console.print(table)
    rows = principle_rows(rounds)
    if rows:
        by_principle = Table(title="Audit win % by principle and round (against that round's baseline)",
                             title_justify="left")
        for col in ("principle", *(str(r.get("name")) for r in rounds)):
            by_principle.add_column(col)
        for row in rows:
            by_principle.add_row(*(escape(x) for x in row))
        console.print(by_principle)
    rows = check_round_rows(rounds)
    if rows:
        by_check = Table(title="Checkable principles by round: pass % of the round's model vs its baseline, "
                               "difference in points [CI]; then vs the base model", title_justify="left")
        for col in ("check", *(str(r.get("name")) for r in rounds), *(f"{r.get('name')} vs base" for r in rounds
                                                                        if r.get("audit_vs_base"))):
            by_check.add_column(col)
        for row in rows:
            by_check.add_row(*(escape(x) for x in row))
        console.print(by_check)
    for r in (r for r in rounds if r.get("gate")):
        console.print(f"gate after {r['name']}: {r['gate']['reason']}", markup=False, highlight=False)
    return len(rounds)


def compare(path_a: str, path_b: str | None = None, *, examples: int = 3, console: Console | None = None) -> dict:
    console = console or Console()
    if path_b is None:
        a = open_run(path_a)
        if not print_rounds(console, a, Path(path_a).name or path_a):
            raise UserError(f"{path_a}: no rounds (no iterate.json from `cai iterate`); to compare runs, give two "
                            "run folders: cai compare RUN_A RUN_B")
        return {"rounds": len(read_rounds(a))}
    a, b = open_run(path_a), open_run(path_b)
    effects = print_edit_effects(console, a, b, examples)
    changes = constitution_changes(a, b)
    console.print("[bold]Constitution[/bold]: " + ("no differences" if not changes else ""))
    for line in changes:
        console.print(f"  {line}", markup=False, highlight=False)
    stats_a, stats_b = run_stats(a), run_stats(b)
    table = Table(title="Runs", title_justify="left")
    for col in ("", Path(path_a).name or path_a, Path(path_b).name or path_b):
        table.add_column(col)
    for key in dict.fromkeys([*stats_a, *stats_b]):
        va, vb = stats_a.get(key, "—"), stats_b.get(key, "—")
        table.add_row(key, escape(va), escape(vb) if vb == va else f"[bold]{escape(vb)}[/bold]")
    console.print(table)
    audits = read_audit(a), read_audit(b)
    if any(audits):
        print_audits(console, *audits, (Path(path_a).name or path_a, Path(path_b).name or path_b))
    for store, path in ((a, path_a), (b, path_b)):
        print_rounds(console, store, Path(path).name or path)
    pairs = side_by_side(a, b, examples)
    for prompt, initial, fa, fb in pairs:
        console.print(f"\n[bold]prompt[/bold]: {escape(prompt)}", highlight=False)
        for label, text in (("initial", initial), ("A final", fa), ("B final", fb)):
            console.print(f"  [dim]{label}[/dim]: {escape(text[:400])}", highlight=False)
    return {"edit": [e.__dict__ for e in effects], "constitution": changes, "a": stats_a, "b": stats_b,
            "examples": len(pairs),
            "audits": [x is not None for x in audits]}
