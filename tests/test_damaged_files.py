"""Nothing damaged is ever trusted. Every shard's (and every run-scope output's) size and sha256 are recorded
when it is written; a run checks sizes and Parquet footers before it uses anything, redoes a damaged shard and
every shard made from it (one line says so), and runs export (or training) again over a damaged output;
export's fingerprint is the content of the shards it read; `cai verify` reads every byte. A manifest that is
not a run's record, or a damaged shard, is one line in every command that reads a run folder.

The engine is a stand-in with opinions (its verdicts are not ties, so there are preference rows to export).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import cai_pipeline.engines
from cai_pipeline.cli import main
from tests.conftest import REPO, later_wins, one_line
from tests.echo_engine import EchoEngine
from tests.train.conftest import tiny_model  # noqa: F401 - the fixture

CONFIG = str(REPO / "configs" / "demo.yaml")
BASE = ["prompts.limit=4", "shard_size=2", "sample.max_tokens=8", "revise.max_tokens=8", "revise.rounds=1",
        "revise.few_shot=0", "judge.principles=1", "judge.min_margin=0", "stages=[sample,revise,pairs,judge,export]",
        "--no-report"]


class Opinionated(EchoEngine):
    def choice_logprobs(self, convs, choices):
        out = []
        for conv in convs:
            h = hashlib.sha256(json.dumps(conv).encode()).digest()
            out.append({c: -1.0 - h[i] / 64 for i, c in enumerate(choices)})
        return out


@pytest.fixture(autouse=True)
def engine(monkeypatch):
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: Opinionated())


def cai(out: Path, *extra: str) -> int:
    return main(["run", CONFIG, *later_wins(f"out_dir={out}", *BASE, *extra)])


def parquet(root: Path) -> dict[str, list]:
    return {str(p.relative_to(root)): pq.read_table(p).to_pylist() for p in sorted(root.rglob("*.parquet"))
            if not p.name.startswith(".")}


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def flip_a_byte(path: Path) -> None:
    """Same size, other content: only a content hash tells. The byte is in the first column chunk (just past the
    leading magic), never in the footer, whose place depends on the schema's size."""
    data = bytearray(path.read_bytes())
    data[8] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """A finished run, never damaged: what every repaired run must equal."""
    import pytest as _pytest

    out = tmp_path_factory.mktemp("whole") / "run"
    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: Opinionated())
        assert cai(out) == 0
    return out


@pytest.fixture
def run(whole, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(whole, out)
    return out


def test_every_shard_records_its_size_and_hash(whole):
    stats = json.loads((whole / "stats" / "revise" / "part-00001.json").read_text())
    data = (whole / "revise" / "part-00001.parquet").read_bytes()
    assert stats["files"]["data"] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert stats["files"]["rejects"]["bytes"] == (whole / "rejects" / "revise" / "part-00001.parquet").stat().st_size
    files = json.loads((whole / "manifest.json").read_text())["stages"]["export"]["files"]
    assert "datasets/preferences/train-00000-of-00001.parquet" in files and "datasets/README.md" in files


def test_a_truncated_shard_is_redone_with_everything_made_from_it(run, whole, capsys):
    truncate(run / "sample" / "part-00001.parquet")
    assert cai(run) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "damaged" in line]
    assert len(warned) == 1 and "sample/part-00001.parquet is damaged" in warned[0]
    assert "revise/part-00001.parquet" in warned[0] and "judge/part-00001.parquet" in warned[0]
    assert parquet(run) == parquet(whole)
    # The shards were made again to the same bytes (the stand-in, as vLLM on CPU, replays a shard exactly), so
    # the datasets made from them are current: export's fingerprint is their content, not their counts.
    assert json.loads((run / "manifest.json").read_text())["last_run"]["export"] == "already done"


def test_a_damaged_stats_or_rejects_part_redoes_its_shard(run, whole, capsys):
    (run / "stats" / "pairs" / "part-00000.json").write_text("[]")
    truncate(run / "rejects" / "judge" / "part-00001.parquet", 10)
    assert cai(run) == 0
    assert capsys.readouterr().err.count("is damaged") == 2
    assert parquet(run) == parquet(whole)


def test_a_run_that_would_not_redo_a_damaged_shard_is_refused(run, capsys):
    truncate(run / "sample" / "part-00000.parquet")
    before = (run / "revise" / "part-00000.parquet").read_bytes()
    one_line(capsys, cai(run, "--stages", "revise"), "sample/part-00000.parquet", "damaged", "sample",
             "nothing was changed")
    assert (run / "revise" / "part-00000.parquet").read_bytes() == before


def test_a_truncated_dataset_file_makes_export_run_again(run, whole, capsys):
    truncate(run / "datasets" / "sft" / "train-00000-of-00001.parquet")
    assert cai(run) == 0
    assert "train-00000-of-00001.parquet is damaged" in capsys.readouterr().err
    assert parquet(run) == parquet(whole)


def test_export_runs_again_when_a_shard_changed_content(run, capsys):
    from cai_pipeline.records import SampleRecord
    from cai_pipeline.store import RunStore

    store = RunStore(run)
    rows = store.read_shard("sample", 0)
    rows[0]["response"] = "another text of the same shard"
    store.write_shard("sample", 0, rows, SampleRecord, [], store.read_stats("sample", 0))  # counts unchanged
    assert cai(run, "--stages", "export") == 0
    assert json.loads((run / "manifest.json").read_text())["last_run"]["export"] == "ran"


def test_verify_reads_every_byte_and_repair_makes_the_run_whole_again(run, whole, capsys):
    assert main(["verify", str(run)]) == 0 and "all as written" in capsys.readouterr().out
    flip_a_byte(run / "revise" / "part-00000.parquet")
    flip_a_byte(run / "datasets" / "preferences" / "train-00000-of-00001.parquet")
    assert main(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert "revise/part-00000.parquet: its content is not what was written" in out and "--repair" in out
    assert "preferences/train-00000-of-00001.parquet" in out
    assert main(["verify", str(run), "--repair"]) == 0
    assert cai(run) == 0 and parquet(run) == parquet(whole)
    assert main(["verify", str(run)]) == 0


@pytest.mark.parametrize("manifest", ["[]", "{}", "7"])
def test_a_manifest_that_is_not_a_runs_record_is_one_line_everywhere(run, manifest, capsys):
    (run / "manifest.json").write_text(manifest)
    one_line(capsys, cai(run), "manifest")
    for argv in (["report", str(run)], ["show", str(run), "x"], ["compare", str(run), str(run)],
                 ["verify", str(run)]):
        one_line(capsys, main(argv), str(run))


def test_readers_name_a_damaged_shard_and_the_fix(run, capsys):
    truncate(run / "revise" / "part-00000.parquet")
    for argv in (["report", str(run)], ["show", str(run), "x"], ["compare", str(run), str(run)]):
        line = one_line(capsys, main(argv), "revise/part-00000.parquet", "command again to redo it")
        assert "ArrowInvalid" not in line


def test_a_damaged_checkpoint_is_trained_again(run, tiny_model, capsys):  # noqa: F811
    args = ["train", CONFIG, f"out_dir={run}", *BASE, f"train.model={tiny_model}", "train.loss=sft",
            "train.max_steps=1", "train.batch_size=1", "train.precision=fp32", "train.plots=false",
            "train.max_length=64", "train.max_prompt_length=32"]
    assert main(args) == 0, capsys.readouterr().err
    weights = run / "checkpoint" / "model.safetensors"
    whole = weights.read_bytes()
    truncate(weights, 1000)
    capsys.readouterr()
    assert main(args) == 0
    assert "checkpoint/model.safetensors is damaged" in capsys.readouterr().err
    assert weights.read_bytes() == whole  # the same step from the same start, fp32 on one process


def test_verify_reads_the_rounds_of_an_iterate_folder(whole, tmp_path, capsys):
    top = tmp_path / "it"
    shutil.copytree(whole, top / "rounds" / "00-sl")
    (top / "manifest.json").write_text(json.dumps({"package": "cai-pipeline", "kind": "iterate", "stages": {}}))
    flip_a_byte(top / "rounds" / "00-sl" / "judge" / "part-00001.parquet")
    assert main(["verify", str(top)]) == 1
    assert "rounds/00-sl/judge/part-00001.parquet" in capsys.readouterr().out
