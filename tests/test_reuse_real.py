"""`--reuse` on the real embedded model (vLLM): edit the critique text of a principle the first run drew → the
chains that drew it are computed again from the round that drew it, every other row is byte-identical, and the
manifest counts say so. Tiny on purpose (3 prompts, 16-token steps); tests/test_reuse.py covers the rest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from cai_pipeline.config import load_config
from cai_pipeline.pipeline import run_pipeline
from cai_pipeline.store import RunStore
from tests.conftest import REPO, later_wins

pytestmark = pytest.mark.model


def _config(tmp_path: Path, name: str, constitution: Path, *extra: str):
    return load_config(REPO / "configs" / "demo.yaml", later_wins(
        f"out_dir={tmp_path / name}", f"constitution={constitution}", "stages=[sample,revise,pairs,judge]",
        "prompts.limit=3", "shard_size=2", "sample.max_tokens=16", "revise.max_tokens=16", "revise.rounds=2",
        "revise.few_shot=0", "judge.principles=1", *extra))


def _chains(root: str) -> dict[str, dict]:
    return {f"{r['prompt_id']}/{r['sample_idx']}": r for r in RunStore(root).read_stage("revise")}


def _digest(root: str) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_edit_one_critique_recomputes_exactly_the_chains_that_drew_it(vllm_engine, tmp_path):
    data = yaml.safe_load((REPO / "constitutions" / "harmless.yaml").read_text())
    data.pop("templates", None)
    original = tmp_path / "c.yaml"
    original.write_text(yaml.safe_dump(data, sort_keys=False))
    old_cfg = _config(tmp_path, "old", original)
    run_pipeline(old_cfg, engine=vllm_engine, summary=False, report=False, warn=False)
    old = _chains(old_cfg.out_dir)
    edited_id = next(iter(old.values()))["rounds"][-1]["principle_id"]  # a principle the run drew
    for p in data["principles"]:
        if p["id"] == edited_id:
            p["critique"] = "List every problem in your last response, one per line."
    changed = tmp_path / "edited" / "c.yaml"
    changed.parent.mkdir()
    changed.write_text(yaml.safe_dump(data, sort_keys=False))
    before = _digest(old_cfg.out_dir)

    cfg = _config(tmp_path, "new", changed, f"reuse={old_cfg.out_dir}")
    manifest = run_pipeline(cfg, engine=vllm_engine, summary=False, report=False, warn=False)
    new = _chains(cfg.out_dir)
    assert new.keys() == old.keys()
    touched = {k for k, row in old.items() if edited_id in [r["principle_id"] for r in row["rounds"]]}
    rounds_computed = 0
    for k, row in new.items():
        ids = [r["principle_id"] for r in row["rounds"]]
        assert ids == [r["principle_id"] for r in old[k]["rounds"]]  # the edit moved no draw
        if k in touched:
            first = ids.index(edited_id)
            assert row["rounds"][:first] == old[k]["rounds"][:first]
            rounds_computed += len(ids) - first
        else:
            assert row == old[k]
    assert RunStore(cfg.out_dir).read_stage("sample") == RunStore(old_cfg.out_dir).read_stage("sample")
    reuse = manifest["reuse"]
    assert reuse["sample"]["reused"] == len(RunStore(old_cfg.out_dir).read_stage("sample"))
    assert (reuse["revise"]["reused"], reuse["revise"]["recomputed"]) == (len(old) - len(touched), len(touched))
    assert reuse["revise"]["rounds_computed"] == rounds_computed
    assert reuse["revise"]["added"] == reuse["revise"]["dropped"] == 0
    assert _digest(old_cfg.out_dir) == before  # the old run is untouched


def test_with_row_seeds_a_recomputed_chain_equals_a_from_scratch_one(hf_engine, tmp_path):
    """transformers with engine.row_seeds: each row generated alone after its own seed, so the rows a --reuse
    run recomputes are exactly those a run from scratch with the edited constitution makes."""
    data = yaml.safe_load((REPO / "constitutions" / "harmless.yaml").read_text())
    data.pop("templates", None)
    original = tmp_path / "c.yaml"
    original.write_text(yaml.safe_dump(data, sort_keys=False))
    seeded = ("engine.kind=hf", "engine.row_seeds=true", "stages=[sample,revise]", "sample.max_tokens=8",
              "revise.max_tokens=8")
    hf_engine.row_seeds = True
    try:
        old_cfg = _config(tmp_path, "old", original, *seeded)
        run_pipeline(old_cfg, engine=hf_engine, summary=False, report=False, warn=False)
        edited_id = next(iter(_chains(old_cfg.out_dir).values()))["rounds"][0]["principle_id"]
        for p in data["principles"]:
            if p["id"] == edited_id:
                p["revision"] = "Rewrite the response in one short, plain sentence."
        changed = tmp_path / "edited.yaml"
        changed.write_text(yaml.safe_dump(data, sort_keys=False))
        fresh = _config(tmp_path, "fresh", changed, *seeded)
        run_pipeline(fresh, engine=hf_engine, summary=False, report=False, warn=False)
        reused = _config(tmp_path, "reused", changed, *seeded, f"reuse={old_cfg.out_dir}")
        manifest = run_pipeline(reused, engine=hf_engine, summary=False, report=False, warn=False)
    finally:
        hf_engine.row_seeds = False
    assert manifest["reuse"]["revise"]["recomputed"] >= 1
    assert _chains(reused.out_dir) == _chains(fresh.out_dir)
