"""The run folder you can trust: --restart deletes only what a run made and only after everything validated;
every Parquet folder reads as a dataset; options in any order; the summary table; files that honour the umask.

The engine is a stand-in (these are about folders, not text); the real engines run in test_pipeline.py.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import cai_pipeline.engines
from cai_pipeline.cli import main
from cai_pipeline.store import RunLayout
from tests.conftest import REPO, later_wins, one_line
from tests.echo_engine import EchoEngine

CONFIG = str(REPO / "configs" / "demo.yaml")
BASE = ["prompts.limit=4", "shard_size=2", "sample.max_tokens=8", "revise.max_tokens=8", "revise.rounds=1",
        "revise.few_shot=0", "judge.principles=1", "stages=[sample,revise,pairs,judge,export]"]
SHARDED = ("sample", "revise", "pairs", "judge")


@pytest.fixture(autouse=True)
def echo(monkeypatch):
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: EchoEngine())


def cai(out: Path, *extra: str) -> int:
    return main(["run", CONFIG, *later_wins(f"out_dir={out}", *BASE, *extra)])



def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def finished(tmp_path) -> Path:
    out = tmp_path / "run"
    assert cai(out) == 0
    return out


# -- --restart and foreign folders ----------------------------------------------------------------------------


def test_a_folder_of_someone_elses_files_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    for name in ("train/notes.txt", "datasets/mine.parquet", "checkpoint/model.safetensors"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("the user's own")
    before = tree(out)
    for flags in ((), ("--restart",)):
        one_line(capsys, cai(out, *flags), "not a cai-pipeline run", "checkpoint", "nothing was changed")
        assert tree(out) == before


def test_restart_with_a_mistyped_constitution_deletes_nothing(finished, capsys):
    before = tree(finished)
    one_line(capsys, cai(finished, "constitution=constitutions/harmles.yaml", "--restart"), "harmles.yaml")
    assert tree(finished) == before


def test_restart_with_a_bad_model_deletes_nothing(finished, capsys, monkeypatch):
    before = tree(finished)
    monkeypatch.undo()  # the real model check
    one_line(capsys, cai(finished, f"judge.model={finished / 'no-such-judge'}", "--restart"), "judge.model",
             "does not exist")
    assert tree(finished) == before


def test_restart_removes_only_what_the_layout_owns(finished):
    (finished / "notes.md").write_text("mine")
    (finished / "extra").mkdir()
    (finished / "extra" / "keep.txt").write_text("mine")
    assert cai(finished, "--restart", "stages=[sample]") == 0
    assert (finished / "notes.md").read_text() == "mine" and (finished / "extra" / "keep.txt").exists()
    assert not (finished / "revise").exists() and not (finished / "datasets").exists()
    manifest = json.loads((finished / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"sample"} and manifest["package"] == "cai-pipeline"


def test_restart_owned_entries_come_from_the_stage_list():
    from cai_pipeline import stages

    owned = {p.name for p in RunLayout("r").owned(stages.owned_entries())}
    assert {s.name for s in stages.sharded()} <= owned
    assert {"manifest.json", "datasets", "checkpoint", "train", "audit", "rejects", "stats"} <= owned
    assert ".lock" not in owned


def test_an_empty_out_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["run", CONFIG, "out_dir=", *BASE])
    one_line(capsys, code, "out_dir")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_manifest_is_not_restarted_over(finished, capsys):
    (finished / "manifest.json").write_text('{"stages": {')
    before = tree(finished)
    one_line(capsys, cai(finished, "--restart"), "damaged manifest")
    assert tree(finished) == before


# -- every Parquet folder is a dataset ---------------------------------------------------------------------


class Opinionated(EchoEngine):
    """A stand-in judge with opinions: log-probs from a hash of the conversation, so verdicts are not ties."""

    def choice_logprobs(self, convs, choices):
        import hashlib

        out = []
        for conv in convs:
            h = hashlib.sha256(json.dumps(conv).encode()).digest()
            out.append({c: -1.0 - h[i] / 64 for i, c in enumerate(choices)})
        return out


def test_every_parquet_folder_reads_with_pandas_pyarrow_and_datasets(tmp_path, monkeypatch):
    import datasets
    import pandas as pd
    import pyarrow.dataset as ds

    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: Opinionated())
    assert cai(tmp_path / "run") == 0
    layout = RunLayout(tmp_path / "run")
    folders = [layout.stage_dir(s) for s in SHARDED] + [layout.rejects_dir(s) for s in ("prompts", *SHARDED)]
    folders += [layout.dataset("sft"), layout.dataset("preferences")]
    loaded_by_datasets = 0
    for folder in folders:
        names = {p.suffix for p in folder.iterdir()}
        assert names == {".parquet"}, f"{folder} holds {names}"
        n = len(pd.read_parquet(folder))
        assert ds.dataset(folder).count_rows() == n
        if n == 0:  # `datasets` refuses any dataset without rows ("corresponds to no data"), whatever the files
            continue
        loaded = datasets.load_dataset("parquet", data_dir=str(folder))
        assert sum(len(split) for split in loaded.values()) == n
        loaded_by_datasets += 1
    assert loaded_by_datasets >= 6
    assert len(pd.read_parquet(layout.stage_dir("sample"))) == 8  # 4 prompts × n=2 echo samples
    stats = json.loads(layout.stats("sample", 0).read_text())
    assert stats["in"] == 2 and stats["out"] == 4


def test_an_empty_shard_beside_full_ones_still_loads_with_datasets(tmp_path):
    """An all-rejected shard is a Parquet file with no rows; `datasets` fails on a row group of 0 rows, so an
    empty shard is written with no row group at all."""
    import datasets

    from cai_pipeline.records import RejectRecord
    from cai_pipeline.store import write_parquet

    row = {"stage": "s", "key": "k", "reason": "r", "detail": "d", "row": "{}"}
    write_parquet(tmp_path / "part-00000.parquet", [], RejectRecord)
    write_parquet(tmp_path / "part-00001.parquet", [row, row], RejectRecord)
    assert pq.ParquetFile(tmp_path / "part-00000.parquet").metadata.num_row_groups == 0
    assert len(datasets.load_dataset("parquet", data_dir=str(tmp_path))["train"]) == 2


def test_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        assert cai(tmp_path / "run", "stages=[sample]") == 0
    finally:
        os.umask(old)
    layout = RunLayout(tmp_path / "run")
    for path in (layout.shard("sample", 0), layout.manifest, layout.stats("sample", 0)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# -- the command line -----------------------------------------------------------------------------------------


def test_options_and_overrides_in_any_order(tmp_path):
    out = tmp_path / "run"
    assert main(["run", CONFIG, "--stages", "sample", "prompts.limit=2", f"out_dir={out}", "shard_size=1"]) == 0
    assert main(["run", "--stages", "sample", CONFIG, f"out_dir={tmp_path / 'b'}", "prompts.limit=2"]) == 0
    assert len(list((out / "sample").glob("*.parquet"))) == 2


def test_run_without_arguments_asks_for_the_config_only(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "config" in err and "overrides" not in err.splitlines()[-1]


def test_empty_stage_list_is_refused(tmp_path, capsys):
    one_line(capsys, cai(tmp_path / "run", "stages=[]"), "stages")
    one_line(capsys, main(["run", CONFIG, f"out_dir={tmp_path / 'r'}", "--stages", ""]), "nothing to run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()


# -- the summary table ----------------------------------------------------------------------------------------


def test_summary_lists_every_stage_in_order_and_what_was_already_done(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("cai_pipeline.console.console.width", 200)
    out = tmp_path / "run"
    assert main(["run", CONFIG, f"out_dir={out}", *BASE, "--stages", "export,judge,pairs,revise,sample"]) == 0
    err = capsys.readouterr().err
    rows = [line for line in err.splitlines() if line.split("│")[1:2]]
    named = [r.split("│")[1].strip() for r in rows if r.split("│")[1].strip() in (*SHARDED, "export")]
    assert named == [*SHARDED, "export"]
    assert f"run {out}" in err and re.search(r"sft \d+ train( / \d+ test)?; preferences \d+ train", err), err
    assert cai(out) == 0
    err = capsys.readouterr().err
    assert err.count("already done") == 5, err


def test_summary_header_shows_the_folder_actually_run(finished, tmp_path, capsys):
    import shutil

    moved = tmp_path / "moved"
    shutil.move(finished, moved)
    capsys.readouterr()
    assert cai(moved) == 0
    err = capsys.readouterr().err
    assert f"run {moved}" in err and f"run {finished}" not in err


def test_manifest_totals_match_the_stats_files(finished):
    manifest = json.loads((finished / "manifest.json").read_text())
    layout = RunLayout(finished)
    for stage in SHARDED:
        stats = [json.loads(p.read_text()) for p in sorted(layout.stats_dir(stage).glob("*.json"))]
        entry = manifest["stages"][stage]
        assert entry["shards_done"] == entry["shards_total"] == len(stats) == 2
        assert entry["out"] == sum(s["out"] for s in stats) == pq.read_table(layout.stage_dir(stage)).num_rows
    assert manifest["stages"]["export"]["summary"]["rows"] > 0
