"""The checkable-principles proof's table (BENCHMARKS.md, "Checkable principles"), read from a finished
`cai iterate configs/checks-proof.yaml` folder: per round, each audit's check pass rates (model vs baseline,
difference with its interval), the judged principles' win rates and the benign refusal rates. Writes
bench/results/checks-proof.json and prints the Markdown rows.

    python bench/checks_proof.py [outputs/checks-proof]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one

from cai_pipeline.audit.summary import read_summary  # noqa: E402


def pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def audits(run: Path) -> list[tuple[str, str, Path]]:
    """(round, audited against, summary path) for each audit of the run."""
    out = []
    for folder in sorted((run / "rounds").iterdir()):
        against = "base" if folder.name.endswith("-sl") else "previous round"
        out.append((folder.name, against, folder / "audit" / "summary.json"))
        base = run / "vs-base" / folder.name / "audit" / "summary.json"
        if base.exists():
            out.append((folder.name, "base", base))
    return out


def rows(run: Path) -> tuple[list[str], dict]:
    lines, record = [], {}
    for name, against, path in audits(run):
        s = read_summary(path)
        if s is None:
            continue
        record[f"{name} vs {against}"] = json.loads(s.to_json())
        checks = " | ".join(f"{pct(c.pass_rate_model)} vs {pct(c.pass_rate_baseline)}: {100 * c.difference:+.1f} "
                            f"[{100 * c.difference_ci_low:+.1f}, {100 * c.difference_ci_high:+.1f}]"
                            for c in s.checks.values())
        judged = " · ".join(f"{pid} {pct(p.win_rate)} [{pct(p.ci_low)}, {pct(p.ci_high)}]"
                            for pid, p in s.principles.items())
        o = s.overall
        lines.append(f"| {name} | {against} | {checks} | {judged} | {pct(o.refusal_rate_model)} / "
                     f"{pct(o.refusal_rate_baseline)} | {o.mean_length_model} / {o.mean_length_baseline} |")
    return lines, record


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "outputs" / "checks-proof")
    lines, record = rows(run)
    ids = next(iter(record.values()))["checks"] if record else {}
    print("| round | audited against | " + " | ".join(f"{pid}: pass % model vs baseline, diff [95% CI]"
                                                    for pid in ids) + " | judged win % [95% CI] | benign refusal % "
          "model / baseline | mean length (tokens) model / baseline |")
    print("|---" * (5 + len(ids)) + "|")
    print("\n".join(lines))
    out = ROOT / "bench" / "results" / "checks-proof.json"
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
