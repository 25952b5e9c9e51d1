"""`cai run NEW --reuse OLD`: the rows of an earlier run, indexed by identity with their content keys
(rowkeys.py), for the stages to take wherever a new row's key matches. The old run is only ever read.

Per stage the index maps a row's identity (prompt_id; prompt_id/sample_idx; pair_id) to its key and row,
across all of the old run's shards: rows are matched by content, not by position, so added prompts and new
shard boundaries do not matter. A shard without its keys file offers nothing (it is computed again)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from cai_pipeline.errors import UserError
from cai_pipeline.store import RunStore, read_parquet

# The counters a stage adds to its StageResult.counts (summed over shards by the driver).
REUSED, RECOMPUTED, ADDED = "reuse:reused", "reuse:recomputed", "reuse:added"


def open_source(old: str | Path, out_dir: str | Path) -> ReuseSource:
    """The old run to reuse, checked: a run folder of ours, and not the folder this run writes."""
    old_path, new_path = Path(old), Path(out_dir)
    if not old_path.is_dir() or RunStore(old_path).read_manifest() is None:
        raise UserError(f"reuse: {old} is not a cai-pipeline run folder (no manifest.json); give the out_dir of "
                        "an earlier `cai run`")
    if new_path.exists() and old_path.resolve() == new_path.resolve():
        raise UserError(f"reuse: {old} is this run's own out_dir; set out_dir to a new folder (the old run is "
                        "only read, never changed)")
    return ReuseSource(old_path)


class ReuseSource:
    """The old run's rows and keys, per stage, loaded on first use (each process loads its own)."""

    def __init__(self, root: Path):
        self.root = root
        self.store = RunStore(root)
        self._stages: dict[str, dict] = {}

    def stage(self, name: str) -> dict:
        """identity → {"key": the keys file's entry, "rows": the rows (rows of weak verdicts too, for judge)}."""
        if name not in self._stages:
            self._stages[name] = self._load(name)
        return self._stages[name]

    def _load(self, name: str) -> dict:
        index: dict[str, dict] = {}
        for shard in self.store.shard_indices(name):
            keys = self.store.read_keys(name, shard).get("rows", {})
            if not keys:
                continue
            rows = self.store.read_shard(name, shard)
            if name == "judge":  # a verdict too weak to be a label is still a verdict: reusable
                rows += [json.loads(r["row"]) for r in self._rejects(name, shard) if r["reason"] in WEAK]
            for row in rows:
                ident = identity(name, row)
                if ident in keys:
                    index.setdefault(ident, {"key": keys[ident], "rows": []})["rows"].append(row)
        return index

    def _rejects(self, name: str, shard: int) -> list[dict]:
        path = self.store.layout.rejects(name, shard)
        return read_parquet(path) if path.exists() else []

    def summary(self, name: str, counts: Counter | dict) -> dict:
        """The manifest's account of one stage: rows reused, recomputed, added, and old rows no longer made."""
        reused, recomputed = counts.get(REUSED, 0), counts.get(RECOMPUTED, 0)
        old_rows = sum(len(e["rows"]) for e in self.stage(name).values())
        out = {"source": str(self.root), "reused": reused, "recomputed": recomputed,
               "added": counts.get(ADDED, 0), "dropped": max(0, old_rows - reused - recomputed)}
        extra = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("reuse:") and
                 k not in (REUSED, RECOMPUTED, ADDED)}
        return {**out, **extra}


WEAK = ("tie", "inconsistent", "below_margin")  # judge rejects that carry verdicts (stages/judge.py)


def identity(stage: str, row: dict) -> str:
    if stage == "sample":
        return row["prompt_id"]
    if stage == "revise":
        return f"{row['prompt_id']}/{row['sample_idx']}"
    return row["pair_id"]
