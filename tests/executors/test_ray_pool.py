"""One actor pool per run (executors/ray.py `stage_group`): consecutive stages of one model — sample and
revise, and pairs and judge where the judge is the policy — go through one Ray actor pool, so each actor builds
its engine once per run instead of once per stage. Counted on the openai engine against a fake server
(tests/batch_server.py), where every engine built probes GET /v1/models once; this is also the openai engine
under executor.kind=ray, end to end, with the rows of a local run."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from cai_pipeline.config import load_config
from cai_pipeline.pipeline import run_pipeline
from tests.batch_server import JUDGE, MODEL, BatchServer
from tests.conftest import REPO

CONFIG = REPO / "configs" / "demo.yaml"


def run(tmp_path, name, server, *extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(4)))
    cfg = load_config(CONFIG, [f"out_dir={tmp_path / name}", f"model={MODEL}", "engine.kind=openai",
                               f"engine.base_url={server.url}", f"prompts.path={prompts}", "shard_size=2",
                               "stages=[sample,revise,pairs,judge,export]", "revise.rounds=1", "revise.few_shot=0",
                               "judge.principles=1", "judge.min_margin=0", "judge.drop_inconsistent=false",
                               "executor.actors=1", "executor.cpus_per_actor=1", *extra])
    return run_pipeline(cfg, summary=False, report=False, warn=False)


def rows(out):
    return {str(p.relative_to(out)): pq.read_table(p).to_pylist() for p in sorted(out.rglob("*.parquet"))}


@pytest.mark.parametrize("judge,loads", [(None, 1), (JUDGE, 2)])
def test_one_model_load_per_actor_per_run_and_the_rows_of_a_local_run(cluster, tmp_path, judge, loads):
    extra = [f"judge.model={judge}"] if judge else []
    with BatchServer() as server:
        local = run(tmp_path, "local", server, *extra)
        server.probes = 0
        manifest = run(tmp_path, "ray", server, "executor.kind=ray", *extra)
        assert server.probes == loads  # before pool reuse: 3 (sample, revise, judge each built one)
    assert sum(e["loads"] for e in manifest["engine_stats"].values()) == loads  # and the manifest says so
    assert local["engine_stats"]["policy"]["loads"] == 1
    assert manifest["last_run"]["revise"] == "ran (in sample's actors)"
    assert manifest["last_run"]["judge"] == ("ran (in sample's actors)" if judge is None else "ran")
    for stage in ("sample", "revise", "pairs", "judge"):
        assert manifest["stages"][stage]["shards_done"] == 2
        assert manifest["stages"][stage]["requests"] == local["stages"][stage]["requests"]
    assert rows(tmp_path / "ray") == rows(tmp_path / "local")
