"""`cai iterate` with executor.kind=ray on the real embedded model (the tiny config of test_iterate_real.py, one
actor × 2 CPUs): an SL round and an RL round finish with checkpoints and audits, each round's generation ran in
one actor pool that loaded the model once (sample → revise → pairs → judge, the judge being the policy), and
Ray was given back before each training step. Only invariants are asserted."""

from __future__ import annotations

import json

import pytest

from tests.conftest import missing
from tests.test_iterate_real import TINY, finish

pytestmark = pytest.mark.model


def test_iterate_under_ray(model_path, tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        missing("Ray is not installed (pip install 'cai-pipeline[ray]')")
    config = tmp_path / "tiny-ray.yaml"
    config.write_text(TINY.format(model=model_path).replace("shard_size: 64", "shard_size: 2")
                      + "executor: {kind: ray, actors: 1, cpus_per_actor: 2}\n")
    out = tmp_path / "run"
    finish(config, out, tmp_path / "iterate.log")
    record = json.loads((out / "iterate.json").read_text())
    assert [(r["name"], r["status"]) for r in record["rounds"]] == [("00-sl", "done"), ("01-rl", "done")]
    for r in record["rounds"]:
        folder = out / "rounds" / r["name"]
        assert (folder / "checkpoint" / "config.json").exists() and (folder / "audit" / "summary.json").exists()
        manifest = json.loads((folder / "manifest.json").read_text())
        shards = manifest["stages"]["sample"]["shards_total"]
        assert shards >= 2 and all(manifest["stages"][s]["shards_done"] == shards
                                   for s in ("sample", "pairs", "judge") if s in manifest["stages"])
        # one actor: one load of the round's model for sample and revise (before: one per stage); an RL round's
        # judge is the base model (iterate.round_config), another model, so one more load, in a pool of its own
        loads = {role: e["loads"] for role, e in manifest["engine_stats"].items() if role in ("policy", "judge")}
        assert loads == ({"policy": 1} if r["kind"] == "sl" else {"policy": 1, "judge": 1})
