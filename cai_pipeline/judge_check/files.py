"""What a judge check leaves behind (store.JudgeCheckLayout): summary.json (**contract**), written last, a README
with the table, and a plot of the shifts. The terminal shows the README's table. Every number comes from the
summary, so the three cannot disagree."""

from __future__ import annotations

from cai_pipeline.judge_check.summary import JudgeCheckSummary, ProbeScore
from cai_pipeline.store import JudgeCheckLayout, atomic_write, atomic_write_text

WHAT = {
    "position": "the response moved from the second slot to the first",
    "verbosity": "a sentence of neutral filler added",
    "markdown": "the same sentences as a markdown list, the first bold",
    "caveat": "a disclaimer added (against filler of the same length)",
    "authority": "\"experts agree\" and a made-up citation added (against filler of the same length)",
    "revised": "labelled as a revision (against filler of the same length)",
    "refusal": "a polite refusal in place of the answer, benign prompts only (only a positive shift is a bias)",
    "self": "another model's response in place of the judge's own",
}


def write_check(layout: JudgeCheckLayout, summary: JudgeCheckSummary) -> None:
    """The README and plot first, summary.json last: a check cut short leaves no summary that looks finished."""
    layout.summary.unlink(missing_ok=True)
    write_plot(layout, summary)
    atomic_write_text(layout.readme, readme(summary))
    atomic_write_text(layout.summary, summary.to_json())


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:+.3f}"


def rows(summary: JudgeCheckSummary) -> list[tuple[str, str, str, str, str]]:
    """(probe, shift, interval, n, flag) per probe run."""
    def line(name: str, r: ProbeScore) -> tuple[str, str, str, str, str]:
        interval = "—" if r.ci_low is None else f"[{_num(r.ci_low)}, {_num(r.ci_high)}]"
        return name, _num(r.shift), interval, str(r.n), "FLAG" if r.flagged else ""

    return [line(name, r) for name, r in summary.probes.items()]


def readme(summary: JudgeCheckSummary) -> str:
    s, level = summary.settings, round(100 * summary.settings.confidence)
    lines = ["# Judge check", "",
             f"**{summary.judge}** probed on {s.pairs} pairs over {s.prompts} prompts of {s.source}, "
             f"{s.principles_per_pair} principle(s) per pair, every variant in both orders. A shift is the mean "
             "change in the judge's p for the changed response (−1 to 1; 0: the change does not move it), with a "
             f"{level}% bootstrap interval over prompts; FLAG: the interval excludes 0 and |shift| ≥ "
             f"{s.threshold}.", "",
             "| probe | shift | interval | pairs | | what changed |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {shift} | {ci} | {n} | {flag} | {WHAT.get(name, '')} |"
              for name, shift, ci, n, flag in rows(summary)]
    lines += [f"\nNot run: **{name}**: {why}." for name, why in summary.skipped.items()]
    flagged = summary.flagged()
    lines += ["", f"Flagged: {', '.join(flagged)}." if flagged else "Nothing flagged.", "",
              f"Cost: {summary.cost.judge_calls} judge calls in {summary.cost.seconds} s"
              + (f", {summary.cost.failed} without a verdict." if summary.cost.failed else ".")]
    if summary.principles:
        names = list(summary.probes)
        lines += ["", "## Per principle (shift; * flagged)", "", "| principle | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        for pid, by_probe in summary.principles.items():
            cells = [(_num(r.shift) + ("*" if r.flagged else "")) if r else "—"
                     for r in (by_probe.get(n) for n in names)]
            lines.append(f"| {pid} | " + " | ".join(cells) + " |")
    lines += ["", "![shifts](shifts.png)", "",
              "How to read this and what to do about a flag: docs/judge-check.md in the cai-pipeline repository.", ""]
    return "\n".join(lines)


def write_plot(layout: JudgeCheckLayout, summary: JudgeCheckSummary) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    shown = [(n, r) for n, r in summary.probes.items() if r.shift is not None][::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.8 + 0.35 * max(1, len(shown))))
    for y, (_, r) in enumerate(shown):
        color = "tab:red" if r.flagged else "tab:blue"
        ax.plot([r.ci_low, r.ci_high], [y, y], color=color, lw=2)
        ax.plot([r.shift], [y], "o", color=color)
    for x in (-summary.settings.threshold, summary.settings.threshold):
        ax.axvline(x, color="grey", ls=":", lw=1)
    ax.axvline(0, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(shown)), [n for n, _ in shown], fontsize=9)
    ax.set_xlabel("shift in the judge's p for the changed response (red: flagged)")
    ax.set_title(f"{summary.judge}: bias profile", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_write(layout.plot, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
