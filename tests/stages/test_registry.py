"""A new stage is one module plus one entry in STAGES: a toy shard stage and a toy run-scope stage, defined
here and added to the list, run through `cai run` with no other file changed — fingerprints, the summary
table, the manifest, `--restart` and the report all find them through the list."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from cai_pipeline import stages
from cai_pipeline.cli import main
from cai_pipeline.records import Record
from cai_pipeline.stages.base import Stage, StageResult
from cai_pipeline.store import atomic_write_json
from tests.conftest import REPO


class WordCount(Record):
    prompt_id: str
    words: int


def count_words(inputs, engine, ctx) -> StageResult:
    out = StageResult()
    for p in inputs["prompts"]:
        out.rows.append({"prompt_id": p["prompt_id"], "words": len(p["prompt"][-1]["content"].split())})
    out.counts["prompts"] = len(inputs["prompts"])
    return out


def tally(ctx) -> dict:
    total = sum(r["words"] for r in ctx.store.read_stage("wordcount"))
    atomic_write_json(ctx.store.root / "tally.json", {"words": total})
    return {"words": total}


TOYS = (
    Stage("wordcount", ("prompts",), WordCount, None, ("prompts",), count_words, "shard", content=("prompts",)),
    Stage("tally", ("wordcount",), None, None, (), tally, "run", owns=("tally.json",),
          identity=lambda ctx: {"shards": ctx.store.shard_indices("wordcount")},
          outputs=lambda ctx: [ctx.store.root / "tally.json"],
          summary_line=lambda summary: ("1", f"{summary['words']} words in all")),
)


@pytest.fixture
def toy_stages(monkeypatch):
    monkeypatch.setattr(stages, "STAGES", stages.STAGES + TOYS)


def test_a_toy_stage_runs_through_cai_run(toy_stages, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "run"
    args = ["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={out}", "prompts.limit=5", "shard_size=2",
            "stages=[wordcount,tally]"]
    assert main(args) == 0
    rows = pq.read_table(out / "wordcount").to_pylist()  # its folder holds only Parquet, like every stage's
    assert len(rows) == 5 and all(r["words"] > 0 for r in rows)
    total = sum(r["words"] for r in rows)
    assert json.loads((out / "tally.json").read_text()) == {"words": total}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["wordcount"]["shards_done"] == 3 and manifest["stages"]["wordcount"]["out"] == 5
    assert manifest["stages"]["tally"]["summary"] == {"words": total}
    assert "prompts_sha256" in manifest["fingerprints"]["wordcount"]  # its `content`, fingerprinted
    shown = capsys.readouterr().err
    assert "wordcount" in shown and f"{total} words in all" in shown  # its own line in the summary table
    assert (out / "report.html").exists()

    assert main(args) == 0  # resumed: both already done
    assert json.loads((out / "manifest.json").read_text())["last_run"] == {"wordcount": "already done",
                                                                            "tally": "already done"}
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--restart"]) == 0  # clears what the toys own (and only that), then runs them again
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["last_run"] == {"wordcount": "ran", "tally": "ran"}


def test_an_unknown_stage_names_the_toys_too(toy_stages, tmp_path, capsys):
    code = main(["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={tmp_path / 'r'}", "--stages", "wordcout"])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'wordcount'" in err and "tally" in err
