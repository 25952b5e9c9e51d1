"""The trace viewer's reuse marks: in a run made with `--reuse OLD`, each revise chain is marked reused (taken
whole from OLD), recomputed (from which round) or added, by comparing the two runs' content keys."""

from __future__ import annotations

from pathlib import Path

from cai_pipeline.store import RunStore


def _chain_keys(store: RunStore) -> dict[str, list[str]]:
    out = {}
    for shard in store.shard_indices("revise"):
        for ident, keys in store.read_keys("revise", shard).get("rows", {}).items():
            out[ident] = keys.get("rounds", [])
    return out


def mark_reuse(store: RunStore, manifest: dict, traces: list[dict]) -> None:
    """Add `reuse` to each sample of `traces`: ["reused", old run], ["recomputed", old run, first round
    recomputed (0-based)] or ["added"]. Nothing where the run reused nothing or the old run is gone."""
    source = next((r.get("source") for r in (manifest.get("reuse") or {}).values() if r.get("source")), None)
    if not source or not Path(source).is_dir():
        return
    new, old = _chain_keys(store), _chain_keys(RunStore(source))
    for trace in traces:
        for sample in trace["samples"]:
            ident = f"{trace['id']}/{sample['i']}"
            if ident not in new:
                continue
            before, after = old.get(ident), new[ident]
            if before is None:
                sample["reuse"] = ["added"]
            elif before == after:
                sample["reuse"] = ["reused", source]
            else:
                first = next((r for r, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
                sample["reuse"] = ["recomputed", source, first]
