"""The pipeline: validate everything, then run the configured stages in order into a resumable run folder.

    run_pipeline → check config, inputs, models and the folder (nothing is touched before this passes)
                 → lock the folder, write the manifest → per stage: sharded stages through an executor
                   (each shard by `executors.base.run_shard`), run-scope stages here → summary

This is the driver: it keeps the manifest and the progress lines; executors only schedule shards, and a shard
is computed in one place, `run_shard`, whichever executor runs it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

from cai_pipeline import __version__
from cai_pipeline import stages as stage_list
from cai_pipeline.assets import Assets, load_assets
from cai_pipeline.bundled import PROJECT_ROOT, resolve_resource
from cai_pipeline.config import RunConfig
from cai_pipeline.errors import UserError
from cai_pipeline.fingerprint import (
    changed_keys,
    check_resume,
    first_keys,
    run_fingerprint,
    shard_fingerprints,
)
from cai_pipeline.judge_roles import run_warnings
from cai_pipeline.stages.base import RunContext, Stage
from cai_pipeline.store import PACKAGE, RunStore, atomic_write_text, file_digest


def shard_count(stage: Stage, store: RunStore, assets: Assets) -> int:
    first = stage.inputs_for(assets.cfg)[0]
    if first == "prompts":
        return assets.prompt_shards
    done = store.shard_indices(first)
    return (max(done) + 1) if done else 0


def shard_rows(stage: Stage, store: RunStore, assets: Assets, shard: int) -> int:
    """Rows shard `shard` of `stage` reads (its first input's), from Parquet metadata: no data is read."""
    first = stage.inputs_for(assets.cfg)[0]
    return len(assets.prompt_shard(shard)) if first == "prompts" else store.shard_rows(first, shard)


# ---------------------------------------------------------------------------------------------------------
# Stage totals in the manifest, kept up to date shard by shard


class StageTotals:
    """The manifest entry of a sharded stage: totals over its finished shards, updated as each one lands
    (the stats files are read once, when the stage starts)."""

    KEYS = ("in", "out", "seconds", "output_tokens", "requests", "sequences")

    def __init__(self, done: list[dict], shards_total: int):
        self.shards_done, self.shards_total = 0, shards_total
        self.sums = dict.fromkeys(self.KEYS, 0)
        self.rejected, self.counts = Counter(), Counter()
        for stats in done:
            self.add(stats)

    def add(self, stats: dict) -> None:
        self.shards_done += 1
        for key in self.KEYS:
            self.sums[key] += stats.get(key, 0)
        self.rejected.update(stats.get("rejected", {}))
        self.counts.update(stats.get("counts", {}))

    def as_dict(self) -> dict:
        return {"shards_done": self.shards_done, "shards_total": self.shards_total, **self.sums,
                "seconds": round(self.sums["seconds"], 2), "rejected": dict(self.rejected), "counts": dict(self.counts)}


def stamp_updated(manifest: dict) -> None:
    """The manifest's `updated`: when the run last changed (the report and `cai compare` show it)."""
    manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")


def run_sharded(stage: Stage, store: RunStore, assets: Assets, executor, manifest: dict) -> str:
    """Every unfinished shard of `stage` through the executor; the manifest and progress follow each shard.
    Returns the stage's status for the summary."""
    from cai_pipeline.console import StageProgress

    total = shard_count(stage, store, assets)
    done = set(store.shard_indices(stage.name))
    pending = [i for i in range(total) if i not in done]
    totals = StageTotals(store.shard_stats(stage.name), total)
    manifest["stages"][stage.name] = totals.as_dict()
    if not pending:
        record_reuse(stage, assets, manifest, totals)
        # Ray may have computed them in an earlier stage's actor pool (one model load for both): say so.
        ahead = getattr(executor, "ran_ahead", {}).get(stage.name)
        return f"ran (in {ahead}'s actors)" if ahead and totals.shards_done else "already done"
    rows = {i: shard_rows(stage, store, assets, i) for i in range(total)}
    progress = StageProgress(stage.name, sum(rows.values()), sum(rows[i] for i in done))
    seen = Counter()  # rows reported from inside each shard so far

    def on_rows(shard: int, n: int) -> None:
        seen[shard] += n
        progress.advance(n)

    def on_done(shard: int, stats: dict) -> None:
        totals.add(stats)
        manifest["stages"][stage.name] = totals.as_dict()
        stamp_updated(manifest)
        store.write_manifest(manifest)
        progress.advance(max(0, rows[shard] - seen[shard]), stats.get("output_tokens", 0))

    try:
        executor.run(stage, pending, assets, store, on_done=on_done, on_rows=on_rows)
    finally:
        progress.close()
    record_reuse(stage, assets, manifest, totals)
    return "ran" if not done else f"resumed ({len(done)} of {total} shards were done)"


def record_reuse(stage: Stage, assets: Assets, manifest: dict, totals: StageTotals) -> None:
    """With `--reuse`: the stage's rows reused, recomputed, added and dropped against the old run."""
    if assets.reuse is not None:
        manifest.setdefault("reuse", {})[stage.name] = assets.reuse.summary(stage.name, totals.counts)


# ---------------------------------------------------------------------------------------------------------
# Run-scope stages: fingerprinted, skipped when done, redone or refused when changed


def run_whole(stage: Stage, ctx: RunContext) -> str:
    from cai_pipeline.integrity import output_damage

    manifest = ctx.manifest
    fingerprint = run_fingerprint(ctx.cfg, stage.settings, stage.identity(ctx) if stage.identity else {})
    entry = manifest["stages"].get(stage.name, {})
    outputs_exist = all(p.exists() for p in (stage.outputs(ctx) if stage.outputs else []))
    # An output that is not what was written (truncated, cut off) is never taken for a finished stage.
    damage = output_damage(ctx.store, stage.name, entry) if outputs_exist else None
    if damage:
        print(f"warning: {damage.path} is damaged ({damage.problem}); running {stage.name} again", file=sys.stderr)
    elif entry.get("fingerprint") == fingerprint and outputs_exist and not ctx.redo:
        return "already done"
    if outputs_exist and not damage and entry.get("fingerprint") and stage.on_change == "refuse" and not ctx.redo:
        changed = changed_keys(entry["fingerprint"], fingerprint)
        raise UserError(f"{stage.name}: its outputs in {ctx.store.root} were made with other settings or inputs "
                        f"({first_keys(changed)}); `cai {stage.name} CONFIG --restart` redoes only this stage, "
                        "replacing them, or set out_dir to a new folder")
    start = time.perf_counter()
    ctx.fingerprint = fingerprint  # e.g. the trainer stores it in its resumable states
    summary = stage.run(ctx)
    manifest["stages"][stage.name] = {"fingerprint": fingerprint, "seconds": round(time.perf_counter() - start, 2),
                                      "summary": summary, "files": output_records(ctx.store, stage.outputs(ctx)
                                                                                  if stage.outputs else [])}
    stamp_updated(manifest)
    ctx.store.write_manifest(manifest)
    return "ran"


def output_records(store: RunStore, paths) -> dict[str, dict]:
    """Size and sha256 of each output a run-scope stage left, by path (relative to the run folder where it lies
    inside), so a later run tells a damaged output from a finished one (integrity.output_damage)."""
    root = store.root.resolve()
    records = {}
    for path in paths:
        if path.is_file():
            resolved = path.resolve()
            name = str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)
            records[name] = file_digest(path)
    return records


# ---------------------------------------------------------------------------------------------------------
# Before anything runs


def check_stage_names(names: list[str]) -> list[Stage]:
    if not names:
        raise UserError("stages: nothing to run; name at least one of " + ", ".join(stage_list.names()))
    for name in names:
        if stage_list.find(name) is None:
            raise UserError(f"--stages: {stage_list.unknown_stage_message(name)}")
    return stage_list.ordered(names)


def check_models(cfg: RunConfig, plan: list[Stage]) -> None:
    """Every model the run will use exists and can run here, before the first stage starts."""
    from cai_pipeline.engines import resolve_kind
    from cai_pipeline.models import check_model

    served = resolve_kind(cfg.engine.kind) == "openai"  # names on a server: the server is probed at start
    roles = {s.model_role for s in plan}
    if "train" in {s.name for s in plan}:
        roles |= {"train", "reference"} if cfg.train.reference_model and cfg.train.needs_reference else {"train"}
    wanted = {"policy": ("model", cfg.model), "judge": ("judge.model", cfg.judge.model or cfg.model),
              "train": ("train.model", cfg.train.model or cfg.model),
              "reference": ("train.reference_model", cfg.train.reference_model)}
    for role in sorted(r for r in roles if r):
        key, name = wanted[role]
        if not (served and role not in ("train", "reference")):
            check_model(name, key)


def check_inputs(plan: list[Stage], cfg: RunConfig, store: RunStore, manifest: dict) -> None:
    """A stage run on its own needs its inputs whole on disk; say which stage to run first."""
    names = {s.name for s in plan}
    for stage in (s for s in plan if s.scope == "shard"):
        for needed in stage.inputs_for(cfg):
            if needed == "prompts" or needed in names:
                continue
            done = len(store.shard_indices(needed))
            total = manifest.get("stages", {}).get(needed, {}).get("shards_total", 0)
            if done == 0 or done < total:
                state = "is missing" if done == 0 else f"is incomplete ({done}/{total} shards)"
                raise UserError(f"stage {stage.name} needs {needed}/ which {state} in {store.root}; "
                                f"run --stages {needed} first (or the whole pipeline)")


_MADE_BY = {"run": "`cai run` (or train/audit)", "iterate": "`cai iterate`"}


def check_folder(store: RunStore, kind: str = "run") -> None:
    """Only a new or empty folder, or one of our runs of the same kind, is a run folder: never write into
    someone's files, nor stages beside an iterate folder's rounds (or rounds beside a run's shards)."""
    foreign = store.foreign_entries()
    if foreign:
        listed = ", ".join(foreign[:5]) + (" …" if len(foreign) > 5 else "")
        raise UserError(f"out_dir: {store.root} is not empty and is not a cai-pipeline run (it holds {listed}); "
                        "choose a new or empty folder — nothing was changed")
    made = (store.read_manifest() or {}).get("kind", "run") if store.is_run() else kind
    if made != kind:
        command = "cai iterate" if made == "iterate" else "cai run"
        raise UserError(f"out_dir: {store.root} was made by {_MADE_BY.get(made, made)}, and this command would "
                        f"write beside what it holds; continue it with `{command}`, or choose another out_dir — "
                        "nothing was changed")


def with_run_settings(cfg: RunConfig, keep: tuple[str, ...]) -> tuple[RunConfig, list[str]]:
    """`cai train CONFIG out_dir=RUN`: the run's own config from its manifest, with only the sections `keep`
    (and out_dir) from the command, so the data overrides the run was made with need not be repeated. Also the
    top-level keys where the command differs from the run (what it would have read: model, seed).
    A folder that is not a run, or a manifest this version cannot read, leaves cfg as it is."""
    from pydantic import ValidationError

    store = RunStore(cfg.out_dir)
    manifest = store.read_manifest() if store.is_run() else None
    if not manifest or manifest.get("kind", "run") != "run" or not isinstance(manifest.get("config"), dict):
        return cfg, []
    dump = cfg.model_dump()
    try:
        merged = RunConfig.model_validate({**manifest["config"], **{k: dump[k] for k in keep}, "out_dir": cfg.out_dir})
    except ValidationError:
        return cfg, []
    return merged, [k for k in ("model", "seed") if dump[k] != manifest["config"].get(k)]


def _git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_manifest(cfg: RunConfig, assets: Assets, prints: dict) -> dict:
    return {
        "package": PACKAGE, "version": __version__, "git_sha": _git_sha(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "out_dir": cfg.out_dir,
        "model": cfg.model, "judge_model": cfg.judge.model or cfg.model, "seed": cfg.seed,
        "config": cfg.model_dump(), "constitution_sha256": assets.hashes["constitution"],
        "template_sha256": assets.hashes["templates"], "prompts_sha256": assets.hashes["prompts"],
        "fingerprints": prints, "stages": {},
    }


# ---------------------------------------------------------------------------------------------------------
# The run


def run_pipeline(cfg: RunConfig, *, stages: list[str] | None = None, restart: bool = False, engine=None,
                 redo: tuple[str, ...] = (), verbose: bool = False, summary: bool = True, report: bool = True,
                 warn: bool = True) -> dict:
    """Run (or resume) `stages` (default: the config's) into cfg.out_dir; returns the manifest.

    restart: clear what the layout owns first (only in a folder with our manifest). redo: run-scope stages to
    run again from scratch, replacing their outputs. engine: a ready engine that serves every model role (tests
    share one); it is not closed here. report: write report.html at the end, of whatever the folder holds.
    warn: print the self-judging warning (judge_roles.py; it is recorded in the manifest either way)."""
    from cai_pipeline.console import quiet_libraries

    quiet_libraries(verbose)
    plan = check_stage_names(list(cfg.stages if stages is None else stages))
    # Everything a run needs is checked before the folder is touched: a mistake costs nothing.
    assets = load_assets(cfg)
    if engine is None:
        check_models(cfg, plan)
    for stage in (s for s in plan if s.check):
        stage.check(assets, {s.name for s in plan}, models=engine is None)
    store = RunStore(cfg.out_dir)
    check_folder(store)
    store.check_writable()
    judge_warnings = run_warnings(cfg, {s.name for s in plan})
    for line in (w for w in judge_warnings.values() if w and warn):
        print(f"warning: {line}", file=sys.stderr)
    with store.lock():
        if restart and store.read_manifest() is not None:
            store.clear(stage_list.owned_entries())
        return _run_locked(cfg, store, plan, assets, engine, set(redo), summary, report, judge_warnings)


def _run_locked(cfg: RunConfig, store: RunStore, plan: list[Stage], assets: Assets, engine, redo: set[str],
                summary: bool, report: bool, judge_warnings: dict[str, str | None]) -> dict:
    from cai_pipeline.console import print_summary
    from cai_pipeline.executors import make_executor

    prints = shard_fingerprints(cfg, assets.hashes, stage_list.STAGES)
    manifest = store.read_manifest()
    # Run-scope stages alone (`cai train`, `cai audit`) read the run's files, not its generation settings: the
    # shards are not checked against this config, and their fingerprints and config stay the run's own.
    reads_only = manifest is not None and not any(s.scope == "shard" for s in plan)
    if not reads_only:
        check_resume(store, manifest, prints)
    if manifest:
        from cai_pipeline.integrity import redo_damaged_shards

        redo_damaged_shards(store, {s.name for s in plan})  # a damaged shard is made again, never read
    manifest = manifest or new_manifest(cfg, assets, prints)
    if reads_only:
        dump = cfg.model_dump()
        manifest["config"] = {**manifest.get("config", {}), **{k: dump[k] for s in plan for k in s.settings}}
    else:
        manifest.update(fingerprints=prints, config=cfg.model_dump())
    # per judging stage, the self-judging warning of its latest run (None: its judge is another model)
    manifest["judge_warnings"] = {**manifest.get("judge_warnings", {}), **judge_warnings}
    check_inputs(plan, cfg, store, manifest)
    if "plan" not in manifest and any(s.scope == "shard" for s in plan):  # what the run was expected to cost, kept beside what it did (cai_pipeline/plan.py)
        manifest["plan"] = planned(cfg, assets, engine)
    if any(s.scope == "shard" for s in plan):
        _record_prompts(store, assets, manifest)
        # The constitution exactly as used, beside the data: `cai compare` diffs it after the file is edited.
        atomic_write_text(store.layout.constitution, resolve_resource(cfg.constitution).read_text(encoding="utf-8"))
    store.write_manifest(manifest)  # first, so a crash at any later point leaves a folder we recognise
    statuses: dict[str, str] = {}
    executor = make_executor(cfg, engine, stages=[s.name for s in plan])
    try:
        for stage in plan:
            if stage.scope == "shard":
                statuses[stage.name] = run_sharded(stage, store, assets, executor, manifest)
            else:
                if stage.model_role is None:
                    executor.release()  # training wants the memory an engine holds
                ctx = RunContext(cfg, store, assets, manifest, executor.engines, redo=stage.name in redo)
                statuses[stage.name] = run_whole(stage, ctx)
    finally:
        executor.close()
        manifest["engine_stats"] = {**manifest.get("engine_stats", {}), **executor.engine_stats()}
        store.write_manifest(manifest)
    manifest["outputs"] = [str(p) for p in store.layout.deliverables()]
    manifest["last_run"] = statuses  # what this invocation did with each stage it was asked to run
    store.write_manifest(manifest)
    if report:  # a step after the stages, not a stage: see cai_pipeline/report/__init__.py
        from cai_pipeline.report import write_report

        write_report(store.root)
        manifest["outputs"] = [str(p) for p in store.layout.deliverables()]
        store.write_manifest(manifest)
    if summary:
        lines = {s.name: s.summary_line for s in stage_list.STAGES if s.summary_line}
        print_summary(manifest, str(store.root), statuses, lines)
    return manifest


def planned(cfg: RunConfig, assets: Assets, engine) -> dict:
    """The plan of a new run, counted with the engine's tokenizer (or the model's where no engine is open yet)."""
    from cai_pipeline.plan import make_plan, stage_estimates, token_counter

    count = engine.count_tokens if engine is not None else token_counter(cfg.model)[0]
    return make_plan(cfg, stage_estimates(cfg, assets, count)).model_dump(mode="json")


def _record_prompts(store: RunStore, assets: Assets, manifest: dict) -> None:
    store.write_rejects("prompts", 0, assets.prompts.rejects)
    manifest["prompts"] = {"source": assets.prompts.source, "kept": len(assets.prompts.rows),
                           "rejected": dict(Counter(r["reason"] for r in assets.prompts.rejects))}
