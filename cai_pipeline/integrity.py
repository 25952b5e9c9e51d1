"""Damaged files are never trusted: every file a run writes has its size and sha256 recorded when it is written
(a shard's in its stats file, a run-scope stage's outputs in the manifest), and is checked before it is used.

    on every run (cheap: a stat and each Parquet file's footer, no data read) → a damaged shard, and every shard
        made from it, is removed and so redone; a damaged export, training or audit output is run again
    `cai verify RUN` (reads every byte) → also a file whose content changed at its written size

A shard is damaged when its data part, its rejects part or its stats file is not what was written. Sharded
stages share shard indices (revise shard i is made from sample shard i), so "made from it" is the same index
of every stage downstream. Nothing but a damaged part of our own and the data parts made from it is removed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from cai_pipeline import stages as stage_list
from cai_pipeline.errors import UserError
from cai_pipeline.store import RunStore, file_problem


@dataclass(frozen=True)
class Damage:
    root: Path  # the run folder
    path: Path
    problem: str
    stage: str
    shard: int | None = None  # None: a run-scope stage's output


def downstream(stage: str) -> list[str]:
    """The sharded stages made, directly or not, from `stage`'s shards (a shard's own index), in order."""
    found: list[str] = []
    for s in stage_list.sharded():
        if any(name == stage or name in found for name in s.inputs):
            found.append(s.name)
    return found


def _stats(store: RunStore, stage: str, index: int) -> tuple[dict | None, str | None]:
    """(the shard's stats, or None; what is wrong with its stats file, or None)."""
    path = store.layout.stats(stage, index)
    if not path.exists():
        return None, None  # made before stats were written: nothing to check against
    try:
        stats = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        return None, f"not readable JSON ({' '.join(str(e).split())[:80]})"
    return (stats, None) if isinstance(stats, dict) else (None, "not a shard's stats")


def shard_damage(store: RunStore, stage: str, index: int, *, full: bool = False) -> Damage | None:
    """What is wrong with finished shard `index` of `stage` (its first damaged file), or None."""
    layout = store.layout
    stats, problem = _stats(store, stage, index)
    if problem:
        return Damage(store.root, layout.stats(stage, index), problem, stage, index)
    files = (stats or {}).get("files") or {}
    parts = [(layout.shard(stage, index), files.get("data"))]
    if files.get("rejects") or layout.rejects(stage, index).exists():
        parts.append((layout.rejects(stage, index), files.get("rejects")))
    for path, record in parts:
        problem = file_problem(path, record, full=full)
        if problem:
            return Damage(store.root, path, problem, stage, index)
    return None


def damaged_shards(store: RunStore, *, full: bool = False) -> list[Damage]:
    return [d for s in stage_list.sharded() for i in store.shard_indices(s.name)
            if (d := shard_damage(store, s.name, i, full=full)) is not None]


def output_damage(store: RunStore, stage: str, entry: dict, *, full: bool = False) -> Damage | None:
    """The first damaged output of a run-scope stage, from the sizes and hashes its manifest entry records."""
    for name, record in (entry.get("files") or {}).items():
        path = store.root / name
        problem = file_problem(path, record, full=full)
        if problem:
            return Damage(store.root, path, problem, stage)
    return None


def damaged_outputs(store: RunStore, manifest: dict, *, full: bool = False) -> list[Damage]:
    stages = manifest.get("stages")
    return [d for name, entry in (stages.items() if isinstance(stages, dict) else [])
            if isinstance(entry, dict) and (d := output_damage(store, name, entry, full=full)) is not None]


def redo_damaged_shards(store: RunStore, planned: set[str], *, full: bool = False, say=None) -> list[Damage]:
    """Remove each damaged shard's data part, and the data parts of the same index downstream, so this run makes
    them again; one line per damaged shard. A run that would not redo them (a stage is not in `planned`) is
    refused first, with nothing removed. Returns what was found."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    # a damage matters to this run when it runs the damaged stage, one made from it, or the export
    found = [d for d in damaged_shards(store, full=full)
             if {d.stage, *downstream(d.stage), "export"} & planned]
    redo = {(stage, d.shard) for d in found for stage in (d.stage, *downstream(d.stage))
            if store.has_shard(stage, d.shard) or stage == d.stage}
    order = stage_list.names()
    missing = sorted({stage for stage, _ in redo} - planned, key=order.index)
    if missing:
        d = found[0]
        wanted = ",".join(sorted({*planned, *missing}, key=order.index))
        raise UserError(f"{d.path}: damaged ({d.problem}); redoing it takes {', '.join(missing)}, which this run "
                        f"does not run: run every stage (`cai run CONFIG`) or --stages {wanted} — nothing was "
                        "changed")
    removed: set[tuple[str, int]] = set()
    for d in found:
        if (d.stage, d.shard) in removed:
            continue  # made from a damaged shard already redone
        gone = []
        for stage in (d.stage, *downstream(d.stage)):
            part = store.layout.shard(stage, d.shard)
            if part.exists():
                part.unlink()  # ours (the layout's part in a folder with our manifest): damaged or made from it
                gone.append(str(part.relative_to(store.root)))
            removed.add((stage, d.shard))
        made_from = gone[1:] if gone and gone[0].startswith(f"{d.stage}/") else gone
        say(f"warning: {d.path.relative_to(store.root)} is damaged ({d.problem}); redoing shard {d.shard} of "
            f"{d.stage}" + (f" and what was made from it ({', '.join(made_from)})" if made_from else ""))
    return found


# ---------------------------------------------------------------------------------------------------------
# `cai verify RUN`: every byte of every recorded file


def run_folders(store: RunStore) -> list[RunStore]:
    """The folder and the run folders inside it (a `cai iterate` folder's rounds/ and vs-base/)."""
    inner = [*store.layout.round_dirs(), *store.layout.base_audit_dirs()]
    return [store, *(RunStore(p) for p in inner if p.is_dir() and RunStore(p).is_run())]


def verify(store: RunStore, *, full: bool = True) -> tuple[int, list[Damage]]:
    """(files checked, damaged ones) in the folder and the run folders inside it."""
    checked, found = 0, []
    for run in run_folders(store):
        manifest = run.read_manifest() or {}
        shards = [(s.name, i) for s in stage_list.sharded() for i in run.shard_indices(s.name)]
        checked += sum(1 + run.layout.rejects(name, i).exists() for name, i in shards)
        stages = manifest.get("stages") if isinstance(manifest.get("stages"), dict) else {}
        checked += sum(len(e.get("files") or {}) for e in stages.values() if isinstance(e, dict))
        found += damaged_shards(run, full=full) + damaged_outputs(run, manifest, full=full)
    return checked, found


def repair(damages: list[Damage]) -> list[Path]:
    """Remove what is damaged so the same run command makes it again: a damaged shard's data part and those of
    the same index downstream, a run-scope stage's damaged output (the stage then runs again). Returns the
    files removed."""
    removed = []
    for d in damages:
        layout = RunStore(d.root).layout
        targets = [d.path] if d.shard is None else [layout.shard(s, d.shard) for s in (d.stage, *downstream(d.stage))]
        for path in targets:
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed
