"""What an audit leaves in the run folder's audit/: the two tables, the plots, a README with the table, and
summary.json (**contract**), written last. And the same table for the terminal (`cai audit`, `cai compare`).

All numbers come from summary.json, so the README, the terminal and the HTML report cannot disagree.
"""

from __future__ import annotations

from cai_pipeline.audit.summary import AuditSummary, Score
from cai_pipeline.records import AuditComplianceRecord, AuditResponseRecord, AuditVerdictRecord
from cai_pipeline.store import RunLayout, atomic_write, atomic_write_text, write_parquet


def write_audit(layout: RunLayout, responses: list[dict], verdicts: list[dict], judged: list[dict],
                summary: AuditSummary, compliance: list[dict] = ()) -> None:
    """Every audit file; summary.json goes first out of the way and comes back last, so a reader never pairs
    an old summary with new tables."""
    layout.audit_summary.unlink(missing_ok=True)
    fields = AuditResponseRecord.model_fields
    write_parquet(layout.audit_responses, [{k: r[k] for k in fields} for r in responses], AuditResponseRecord)
    write_parquet(layout.audit_verdicts, verdicts, AuditVerdictRecord)
    layout.audit_compliance.unlink(missing_ok=True)
    if compliance:
        write_parquet(layout.audit_compliance, list(compliance), AuditComplianceRecord)
    plots = write_plots(layout, judged, summary) if judged else []
    atomic_write_text(layout.audit_readme, readme(summary, [p.name for p in plots]))
    atomic_write_text(layout.audit_summary, summary.to_json())


# ---------------------------------------------------------------------------------------------------------
# Text


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _interval(low: float | None, high: float | None) -> str:
    return "—" if low is None else f"[{_pct(low)}, {_pct(high)}]"


def table_rows(summary: AuditSummary) -> list[tuple[str, ...]]:
    """(name, axis, win %, CI, LC win %, LC CI, SC win %, SC CI, consistency %, n) for overall, each axis, each
    principle."""
    def line(name: str, axis: str, row: Score) -> tuple[str, ...]:
        return (name, axis, _pct(row.win_rate), _interval(row.ci_low, row.ci_high), _pct(row.lc_win_rate),
                _interval(row.lc_ci_low, row.lc_ci_high), _pct(row.sc_win_rate),
                _interval(row.sc_ci_low, row.sc_ci_high), _pct(row.consistency), str(row.n))

    rows = [line("overall", "", summary.overall)]
    rows += [line(f"axis: {name}", "", row) for name, row in summary.axes.items()]
    rows += [line(pid, row.axis or "", row) for pid, row in summary.principles.items()]
    return rows


def check_table_rows(summary: AuditSummary) -> list[tuple[str, ...]]:
    """(principle, model pass % [CI], baseline pass % [CI], difference [CI], check win % [CI], n) per
    checkable principle."""
    def cell(rate, low, high) -> str:
        return f"{_pct(rate)} {_interval(low, high)}"

    return [(pid, cell(c.pass_rate_model, c.pass_rate_model_ci_low, c.pass_rate_model_ci_high),
             cell(c.pass_rate_baseline, c.pass_rate_baseline_ci_low, c.pass_rate_baseline_ci_high),
             "—" if c.difference is None else f"{100 * c.difference:+.1f} {_interval(c.difference_ci_low, c.difference_ci_high)}",
             cell(c.win_rate, c.win_rate_ci_low, c.win_rate_ci_high), str(c.n))
            for pid, c in summary.checks.items()]


CHECK_HEADER = ("checked principle", "model pass %", "baseline pass %", "difference (points)", "check win %",
                "pairs")


def check_section(summary: AuditSummary) -> list[str]:
    """The README's table of checkable principles: exact pass rates, no judge."""
    if not summary.checks:
        return []
    level = round(100 * summary.settings.confidence)
    return ["", "## Checkable principles", "",
            "Decided by each principle's check (a program, no judge): the share of responses that pass, with a "
            f"{level}% bootstrap interval over prompts; the difference model − baseline in points with its interval; "
            "and the pairwise win rate from the check (a pair counts 1 where only the model passes, 0 where only "
            "the baseline does, ½ otherwise).", "",
            "| " + " | ".join(CHECK_HEADER) + " |", "|" + "---|" * len(CHECK_HEADER)] + [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in check_table_rows(summary)]


HEADER = ("", "axis", "win %", "CI", "LC win %", "LC CI", "SC win %", "SC CI", "consistent %", "pairs")


def readme(summary: AuditSummary, plots: list[str]) -> str:
    lines = ["# Audit"]
    if summary.overall.n:
        lines.append("")
        lines += pairwise_lines(summary)
    lines += check_section(summary) + compliance_lines(summary) + implicit_lines(summary) + source_lines(summary) + decontamination_lines(summary)
    if summary.axes_note:
        lines += ["", f"Note: {summary.axes_note}."]
    lines += [f"\nWarning: {w}." for w in summary.warnings]
    lines += [""] + [f"![{name}](plots/{name})" for name in plots]
    lines += ["", "How to read this: docs/audit.md in the cai-pipeline repository. The numbers are in summary.json; "
              "every response in responses.parquet, every verdict in verdicts.parquet (pairwise) and "
              "compliance.parquet (pointwise).", ""]
    return "\n".join(lines)


def compliance_lines(summary: AuditSummary) -> list[str]:
    """The pointwise table (violation rate per principle, each side scored, and the drift between them) and the
    likeliest violations per principle."""
    if not summary.compliance:
        return []
    level = round(100 * summary.settings.confidence)
    both = bool(summary.compliance_baseline)
    head = ["principle", "violation %", "CI", "violations / n", "mean P %"] + (
        ["baseline %", "CI", "drift", "CI"] if both else [])
    models = summary.models
    lines = ["", "## Compliance", "",
             f"**{models.get('model', 'model')}**" + (f" against **{models['baseline']}**" if both else "") +
             f", {sum(summary.counts.get('responses', {}).values())} responses to {summary.counts.get('prompts')} "
             f"prompts, each asked about every principle by {models.get('judge', 'the judge')}.", "",
             f"Per principle, the share of the audited responses the judge says violate it (P(Yes) > ½ to "
             f"prompts/violation.j2), with a {level}% bootstrap interval over prompts"
             + ("; drift is the audited minus the baseline rate, each side resampled on its own." if both else "."),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pid, c in summary.compliance.items():
        cells = [pid, _pct(c.violation_rate), _interval(c.ci_low, c.ci_high), f"{c.violations} / {c.n}",
                 _pct(c.mean_p)]
        if both:
            b, d = summary.compliance_baseline.get(pid), summary.drift.get(pid)
            cells += [_pct(b.violation_rate) if b else "—", _interval(b.ci_low, b.ci_high) if b else "—",
                      f"{100 * d.difference:+.1f}{' (rose)' if d.rose else ''}" if d else "—",
                      _interval(d.ci_low, d.ci_high) if d else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    if summary.worst:
        lines += ["", "Likeliest violations (prompt_id / response number, P(violates)); the texts are in "
                  "responses.parquet and the report's audit tab:", ""]
        lines += [f"- {pid}: " + ", ".join(f"{w.prompt_id}/{w.sample_idx} ({w.p_violation:.2f})" for w in worst)
                  for pid, worst in summary.worst.items()]
    return lines


def source_lines(summary: AuditSummary) -> list[str]:
    """Where the responses came from when a side is a log: rows that could not be read, and rows without a
    partner on the other side (counted, never dropped silently)."""
    counts = summary.counts
    lines = []
    if counts.get("log_rejects"):
        lines += ["", f"Log rows not read (rejects/audit/, by reason): {counts['log_rejects']}."]
    unmatched = {k: v for k, v in counts.get("unmatched", {}).items() if v}
    if unmatched:
        lines += ["", "Unmatched (no partner on the other side, so in no pair; still in responses.parquet and "
                  "compliance): " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in unmatched.items()) + "."]
    return lines


def implicit_lines(summary: AuditSummary) -> list[str]:
    """The checkpoint's implicit-reward accuracy on held-out pairs, beside the base model's."""
    r = summary.implicit_reward
    if r is None:
        return []
    c, b = r.checkpoint, r.base
    return ["", "## Agreement with the learned preferences", "",
            f"On the {r.n} held-out preference pairs, the share whose implicit reward ranks chosen above rejected "
            f"({r.loss}, β = {r.beta}: β·log π/π_ref, as RewardBench scores DPO models, arXiv 2403.13787), and the "
            f"base model's reference-free share (log π_base(chosen) > log π_base(rejected)), {r.reference}:", "",
            "| | accuracy % | CI |", "|---|---|---|",
            f"| checkpoint | {_pct(c.accuracy)} | {_interval(c.ci_low, c.ci_high)} |",
            f"| base model | {_pct(b.accuracy)} | {_interval(b.ci_low, b.ci_high)} |"]


def decontamination_lines(summary: AuditSummary) -> list[str]:
    """Whether the audit's prompts were held out: overlaps per source, and what was done with them."""
    d = summary.decontamination
    if d is None:
        return []
    if d.mode == "off":
        return ["", "Decontamination: off (audit.decontaminate); the prompts were not checked against training."]
    per = "; ".join(f"{source}: {count}" for source, count in d.overlapping.items()) or "no source"
    done = (f"{d.dropped} dropped (rejects/audit/, reason contaminated)" if d.mode == "drop"
            else f"{len(d.flagged)} kept and flagged: {', '.join(d.flagged) or 'none'}")
    return ["", f"Decontamination: {d.checked} prompts checked for a shared word {d.n}-gram; overlapping per "
            f"source: {per}. {done}."]


def pairwise_lines(summary: AuditSummary) -> list[str]:
    o, level = summary.overall, round(100 * summary.settings.confidence)
    models = summary.models
    lines = [
             f"**{models.get('model', 'model')}** against **{models.get('baseline', 'baseline')}**, judged by "
             f"{models.get('judge', 'the judge')} on every principle in both orders: {o.n} pairs over "
             f"{o.n_prompts} prompts. Win % is the judge's mean preference for the model (50 = no difference), "
             f"with a {level}% bootstrap interval over prompts; LC is the length-controlled win rate (the "
             "preference the judge would give at equal length, AlpacaEval 2: arXiv 2404.04475); SC is the "
             "style-controlled win rate (at equal length and equal markdown: headers, bold, list items, as LMSYS "
             "does); consistent % is how often the judge's two orders agreed.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table_rows(summary)]
    lines += ["", "| | model | baseline |", "|---|---|---|",
              f"| refusal rate, benign prompts % | {_pct(o.refusal_rate_model)} | {_pct(o.refusal_rate_baseline)} |",
              f"| refusal rate, harmful prompts % | {_pct(o.refusal_rate_harmful_model)} | "
              f"{_pct(o.refusal_rate_harmful_baseline)} |",
               f"| mean length ({summary.settings.length_unit}) | {o.mean_length_model} | {o.mean_length_baseline} |",
              "",
              f"Mean length change: {o.mean_length_change:+} {summary.settings.length_unit} per response."]
    return lines


def console_table(summary: AuditSummary, title: str):
    """The README's table in six columns, so it fits an 80-column terminal: the interval beside the raw and the
    length-controlled rate (the style-controlled rate's interval is in the README and summary.json)."""
    from rich.table import Table

    def span(rate: str, interval: str) -> str:
        return f"{rate} {interval.strip('[]').replace(', ', '–')}" if interval != "—" else rate

    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    for col in ("win % (CI)", "LC % (CI)", "SC %", "consistent", "n"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, _, win, ci, lc, lc_ci, sc, _, consistent, n in table_rows(summary):
        table.add_row(name, span(win, ci), span(lc, lc_ci), sc, consistent, n)
    return table


def compliance_table(summary: AuditSummary, title: str):
    """Violation % with its interval per principle, the baseline's and the drift when both sides were scored."""
    from rich.table import Table

    both = bool(summary.compliance_baseline)
    table = Table(title=title, title_justify="left")
    table.add_column("", no_wrap=True)
    for col in ("violation % (CI)", "mean P %", "n") + (("baseline %", "drift (CI)") if both else ()):
        table.add_column(col, justify="right", no_wrap=True)
    for pid, c in summary.compliance.items():
        cells = [pid, f"{_pct(c.violation_rate)} {_interval(c.ci_low, c.ci_high)}", _pct(c.mean_p), str(c.n)]
        if both:
            b, d = summary.compliance_baseline.get(pid), summary.drift.get(pid)
            cells += [_pct(b.violation_rate) if b else "—",
                      f"{100 * d.difference:+.1f} {_interval(d.ci_low, d.ci_high)}{' rose' if d.rose else ''}"
                      if d else "—"]
        table.add_row(*cells)
    return table


def console_check_table(summary: AuditSummary, title: str):
    """The checkable principles' pass rates for the terminal; None when the constitution has none."""
    from rich.table import Table

    if not summary.checks:
        return None
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(("checked", "model pass %", "baseline pass %", "diff", "check win %", "n")):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i != 0)
    for row in check_table_rows(summary):
        table.add_row(*row)
    return table


# ---------------------------------------------------------------------------------------------------------
# Plots


def write_plots(layout: RunLayout, judged: list[dict], summary: AuditSummary) -> list:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    paths = [layout.audit_plots / "win_rates.png", layout.audit_plots / "length.png"]
    for path, draw in zip(paths, (lambda: forest(summary), lambda: length_scatter(judged))):
        fig = draw()
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=110))
        import matplotlib.pyplot as plt

        plt.close(fig)
    return paths


def forest(summary: AuditSummary):
    """Per principle (and overall, per axis): the win rate with its interval, raw and length-controlled."""
    import matplotlib.pyplot as plt

    pooled = [("overall", summary.overall)] + [(f"axis: {k}", v) for k, v in summary.axes.items()]
    rows = [(name, row) for name, row in pooled + list(summary.principles.items()) if row.win_rate is not None][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(rows)))
    ys = range(len(rows))
    for y, (_, row) in zip(ys, rows):
        ax.plot([row.ci_low, row.ci_high], [y + 0.12] * 2, color="tab:blue", lw=2)
        ax.plot([row.lc_ci_low, row.lc_ci_high], [y - 0.12] * 2, color="tab:orange", lw=2)
    ax.plot([r.win_rate for _, r in rows], [y + 0.12 for y in ys], "o", color="tab:blue", label="win rate")
    ax.plot([r.lc_win_rate for _, r in rows], [y - 0.12 for y in ys], "D", color="tab:orange",
            label="length-controlled")
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.axhline(len(rows) - len(pooled) - 0.5, color="grey", lw=0.6)  # pooled rows above, principles below
    ax.set_yticks(list(ys), [name for name, _ in rows], fontsize=8)
    ax.set_xlabel(f"P(model ≻ baseline), {round(100 * summary.settings.confidence)}% intervals over prompts")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def length_scatter(judged: list[dict]):
    """Each pair's preference against its length difference, with the fitted length model."""
    import matplotlib.pyplot as plt
    import numpy as np

    from cai_pipeline.audit.stats import length_fit, sigmoid

    p = np.array([r["p_a"] for r in judged], dtype=float)
    delta = np.array([r["len_a"] - r["len_b"] for r in judged], dtype=float)
    fit = length_fit(p, delta)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.scatter(delta, p, s=14, alpha=0.6, label="pairs")
    if fit["sd"] > 0:
        grid = np.linspace(delta.min(), delta.max(), 200)
        curve = sigmoid(fit["theta"] + fit["phi"] * np.tanh(grid / fit["sd"]))
        ax.plot(grid, curve, color="tab:orange", label="fitted: σ(θ + φ·tanh(Δ/sd))")
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.axvline(0, color="grey", ls=":", lw=1)
    ax.set_xlabel("length difference, model − baseline (tokens)")
    ax.set_ylabel("P(model ≻ baseline)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
