"""`cai audit CONFIG [key=value ...]`: does the trained model follow the constitution better than the model it
started from? The audit stage of the pipeline, run on its own (fingerprinted: an unchanged audit is not
repeated; `--restart` audits again), then its table in the terminal."""

from __future__ import annotations

import argparse

from cai_pipeline.cli.common import add_config, add_no_report, add_overrides, add_verbose, load_run_config


def _cmd_audit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from cai_pipeline.audit.files import compliance_table, console_check_table, console_table
    from cai_pipeline.audit.summary import read_summary
    from cai_pipeline.pipeline import run_pipeline
    from cai_pipeline.store import RunLayout

    cfg = load_run_config(args.config, args.overrides)
    manifest = run_pipeline(cfg, stages=["audit"], redo=("audit",) if args.restart else (), verbose=args.verbose,
                            summary=False, report=args.report, warn=False)  # its notes below say it
    layout = RunLayout(cfg.out_dir)
    summary = read_summary(layout.audit_summary)
    console = Console()
    if manifest["last_run"]["audit"] == "already done":
        console.print("already audited with these settings (--restart audits again)")
    o = summary.overall
    if o.n:
        console.print(console_table(summary, f"audit {layout.audit_dir}"))
        rates = f"refusal on benign prompts: model {o.refusal_rate_model}, baseline {o.refusal_rate_baseline}"
        console.print(f"{rates}; mean length change {o.mean_length_change:+} {summary.settings.length_unit}",
                      markup=False, highlight=False)
    checks = console_check_table(summary, "checkable principles (exact: no judge)")
    if checks is not None:
        console.print(checks)
    if summary.compliance:
        console.print(compliance_table(summary, f"compliance {layout.audit_dir}"))
    own = manifest.get("judge_warnings", {}).get("audit")
    for line in ([summary.axes_note] if summary.axes_note else []) + [w for w in summary.warnings if w != own]:
        console.print(f"note: {line}", markup=False, highlight=False)
    if own:  # also when the audit was already done: the judge is the same model every time
        console.print(f"warning: {own}", markup=False, highlight=False)
    console.print(f"files: {layout.audit_dir} (README.md, summary.json, responses.parquet, verdicts.parquet, "
                  "compliance.parquet, plots/)",
                  markup=False, highlight=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="does the trained model follow the constitution better? win rates per principle with CIs, "
        "length-controlled, refusal rates",
        description="Audit the config's `audit:` section: by default the run's checkpoint against the model it "
        "started from, on the run's held-out prompts and the bundled audit set, every principle judged in both "
        "orders. Writes <out_dir>/audit/. See docs/audit.md.",
    )
    add_config(p)
    add_overrides(p, "audit.model=embedded audit.limit=20")
    p.add_argument("--restart", action="store_true", help="audit again, replacing the previous audit")
    add_verbose(p)
    add_no_report(p)
    p.set_defaults(func=_cmd_audit)
