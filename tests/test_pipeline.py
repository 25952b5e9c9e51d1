"""Whole runs on the real embedded model: sample → revise → pairs → export through both engines, the CLI,
the run folder's contents, and the clear errors of a partial run."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from cai_pipeline.cli import main
from cai_pipeline.constitution import load_constitution
from cai_pipeline.pipeline import run_pipeline
from tests.conftest import REPO

pytestmark = pytest.mark.model
PRINCIPLE_IDS = {p.id for p in load_constitution(REPO / "constitutions" / "harmless.yaml").principles}


def check_run_folder(out):
    samples = pq.read_table(out / "sample" / "part-00000.parquet").to_pylist()
    rejects = pq.read_table(out / "rejects" / "sample" / "part-00000.parquet").to_pylist()
    assert len(samples) + len(rejects) == 8  # 4 prompts × n=2, every one accounted for
    assert {s["sample_idx"] for s in samples} <= {0, 1} and all(s["n_tokens"] > 0 for s in samples)
    revised = pq.read_table(out / "revise" / "part-00000.parquet").to_pylist()
    assert len(revised) + len(pq.read_table(out / "rejects" / "revise" / "part-00000.parquet")) == len(samples)
    finish = {(s["prompt_id"], s["sample_idx"]): s["finish_reason"] for s in samples}
    for r in revised:
        assert len(r["rounds"]) == 2
        assert {x["principle_id"] for x in r["rounds"]} <= PRINCIPLE_IDS
        assert r["initial_truncated"] == (finish[(r["prompt_id"], r["sample_idx"])] == "length")
    critiques = [x["critique"] for r in revised for x in r["rounds"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["sample"]["out"] == len(samples)
    counts = manifest["stages"]["revise"]["counts"]
    assert counts["rounds"] == len(critiques) == 2 * len(revised)
    # The model may leave a critique empty now and then; the manifest counts each one, and most carry text.
    assert counts["empty_critique"] == sum(not c.strip() for c in critiques) < len(critiques) / 2
    assert len(manifest["constitution_sha256"]) == 64 and manifest["template_sha256"]
    return revised


def check_datasets(out, n_revised):
    import datasets

    sft = datasets.load_dataset("parquet", data_dir=str(out / "datasets" / "sft"))
    prefs = datasets.load_dataset("parquet", data_dir=str(out / "datasets" / "preferences"))
    assert sum(len(s) for s in sft.values()) == n_revised  # the demo keeps unfinished responses, flagged
    final_cut = {(r["prompt_id"], r["sample_idx"]): r["final_truncated"]
                 for r in pq.read_table(out / "revise").to_pylist()}
    assert all(row["truncated"] == final_cut[(row["prompt_id"], row["sample_idx"])] for s in sft.values() for row in s)
    train = prefs["train"]
    assert set(train.column_names) >= {"prompt", "chosen", "rejected", "p_chosen", "origin", "prompt_id"}
    assert all(r["chosen"][0]["role"] == "assistant" and r["prompt"][-1]["role"] == "user" for r in train)
    assert set(train["origin"]) == {"revision"}
    if "test" in prefs:  # no prompt in both splits
        assert not set(prefs["test"]["prompt_id"]) & set(train["prompt_id"])
    card = (out / "datasets" / "README.md").read_text()
    assert "harmless" in card and "mean tokens" in card


def test_run_through_vllm(vllm_engine, run_config):
    cfg = run_config()
    run_pipeline(cfg, engine=vllm_engine)
    out = REPO / cfg.out_dir if not cfg.out_dir.startswith("/") else __import__("pathlib").Path(cfg.out_dir)
    revised = check_run_folder(out)
    check_datasets(out, len(revised))


def test_cli_run_through_hf_then_resume(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={out}", "engine.kind=hf", "prompts.limit=4",
            "sample.max_tokens=16", "revise.max_tokens=16", "stages=[sample,revise,pairs,export]"]
    assert main(args) == 0
    revised = check_run_folder(out)
    check_datasets(out, len(revised))
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/part-*.parquet")}
    assert main(args) == 0  # resume of a finished run: nothing redone
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/part-*.parquet")} == mtimes
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["engine"]["kind"] == "hf" and manifest["version"]
    assert (out / "constitution.yaml").read_text() == (REPO / "constitutions" / "harmless.yaml").read_text()


def test_a_stage_without_its_input_is_a_clear_error(tmp_path, capsys):
    code = main(["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={tmp_path / 'x'}", "engine.kind=hf",
                 "prompts.limit=2", "--stages", "revise"])
    err = capsys.readouterr().err
    assert code == 2 and "needs sample/ which is missing" in err and "--stages sample" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_stage_on_the_command_line(tmp_path, capsys):
    code = main(["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={tmp_path}", "--stages", "sampel"])
    assert code == 2 and "unknown stage 'sampel'" in capsys.readouterr().err


def test_max_tokens_over_the_context_is_a_clear_error(tmp_path, capsys):
    code = main(["run", str(REPO / "configs" / "demo.yaml"), f"out_dir={tmp_path}", "engine.kind=hf",
                 "prompts.limit=1", "sample.max_tokens=9000", "--stages", "sample"])
    err = capsys.readouterr().err
    assert code == 2 and "sample.max_tokens=9000 does not fit the model's context of 4096 tokens" in err
