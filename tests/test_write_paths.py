"""Nothing we did not make is ever replaced, deleted or truncated: every path a user names for us to write
(train.out_dir, train.log_dir, `cai report -o`, `judge-eval --out`, `constitution import -o`) and the mechanisms
themselves (store.atomic_folder, the training states' clean-up, the run folder's lock and write probe). Each
test is a row of docs/reliability.md's table of write paths.

The run is made once by a stand-in engine; the one training is the tiny random llama's single step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cai_pipeline import store
from cai_pipeline.cli import main
from cai_pipeline.config import load_config
from cai_pipeline.errors import UserError
from cai_pipeline.pipeline import run_pipeline
from tests.conftest import REPO, later_wins, one_line
from tests.echo_engine import EchoEngine
from tests.train.conftest import tiny_model  # noqa: F401 - the fixture

CONFIG = str(REPO / "configs" / "demo.yaml")
RUN = ["prompts.limit=2", "sample.max_tokens=8", "revise.max_tokens=8", "revise.rounds=1", "revise.few_shot=0",
       "judge.principles=1", "stages=[sample,revise,pairs,judge,export]"]
SFT = ["train.loss=sft", "train.max_steps=1", "train.batch_size=1", "train.precision=fp32", "train.plots=false",
       "train.max_length=64", "train.max_prompt_length=32", "--no-report"]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run (up to export) with a note of the user's in it; the tests that refuse must leave it so."""
    out = tmp_path_factory.mktemp("write-paths") / "run"
    run_pipeline(load_config(CONFIG, [f"out_dir={out}", *RUN]), engine=EchoEngine(), summary=False, report=False)
    (out / "notes.md").write_text("the user's notes")
    return out


def refused(capsys, run: Path, *overrides: str, needles=("train.out_dir", "nothing was changed")) -> str:
    """`cai train` with these overrides ends in one line, before anything runs, and changes nothing."""
    before = tree(run)
    line = one_line(capsys, main(["train", CONFIG, *later_wins(f"out_dir={run}", *overrides, *SFT)]), *needles)
    assert tree(run) == before
    return line


# -- train.out_dir and train.log_dir: checked before anything runs ------------------------------------------


def test_a_checkpoint_never_replaces_a_folder_of_the_users(run, tmp_path, capsys):
    mine = tmp_path / "ud1"
    mine.mkdir()
    (mine / "thesis.tex").write_text("two years of work")
    refused(capsys, run, f"train.out_dir={mine}", needles=("train.out_dir", str(mine), "thesis.tex",
                                                          "cai-pipeline.json", "nothing was changed"))
    assert (mine / "thesis.tex").read_text() == "two years of work" and len(list(mine.iterdir())) == 1


def test_a_checkpoint_never_replaces_the_run_or_a_folder_holding_it(run, capsys):
    refused(capsys, run, f"train.out_dir={run}", needles=("train.out_dir", "is the run folder"))
    refused(capsys, run, f"train.out_dir={run.parent}", needles=("train.out_dir", "or holds it"))


def test_a_checkpoint_never_goes_into_the_runs_own_entries_or_its_data(run, capsys):
    refused(capsys, run, f"train.out_dir={run / 'datasets'}", needles=("train.out_dir", "datasets/"))
    refused(capsys, run, f"train.out_dir={run / 'sample' / 'ckpt'}", needles=("train.out_dir", "sample/"))


def test_a_checkpoint_never_replaces_a_model_the_run_reads(run, tmp_path, tiny_model, capsys):  # noqa: F811
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    refused(capsys, run, f"train.model={base}", f"train.out_dir={base}", needles=("train.out_dir", "train.model"))
    # `cai train` reads the run's own judge.model (from its manifest); `cai run` reads the config's
    before = tree(run)
    code = main(["run", CONFIG, *later_wins(f"out_dir={run}", *RUN, f"judge.model={base}", f"train.out_dir={tmp_path}",
                                            "stages=[train]", *SFT)])
    one_line(capsys, code, "train.out_dir", "judge.model")
    assert tree(run) == before
    assert (base / "model.safetensors").exists()


def test_the_log_folder_is_held_to_the_same_rule(run, tmp_path, capsys):
    mine = tmp_path / "logs"
    (mine / "state").mkdir(parents=True)
    (mine / "state" / "keep.txt").write_text("mine")
    refused(capsys, run, f"train.log_dir={mine}", needles=("train.log_dir", "state"))
    refused(capsys, run, f"train.log_dir={tmp_path / 'x'}", f"train.out_dir={tmp_path / 'x' / 'ckpt'}",
            needles=("train.out_dir", "overlap"))


def test_a_new_folder_is_trained_into_and_then_ours_to_replace(run, tmp_path, tiny_model, capsys):  # noqa: F811
    out, logs = tmp_path / "ckpt", tmp_path / "logs"
    args = ["train", CONFIG, f"out_dir={run}", *RUN, f"train.model={tiny_model}", f"train.out_dir={out}",
            f"train.log_dir={logs}", *SFT]
    assert main(args) == 0, capsys.readouterr().err
    assert store.folder_is_ours(out) and store.folder_is_ours(logs) and (out / "model.safetensors").exists()
    assert main([*args, "--restart"]) == 0, capsys.readouterr().err  # our own checkpoint: replaced
    assert store.folder_is_ours(out) and (run / "notes.md").exists()


def test_the_runs_own_checkpoint_from_before_markers_is_still_retrained(run, tiny_model, capsys):  # noqa: F811
    args = ["train", CONFIG, f"out_dir={run}", *RUN, f"train.model={tiny_model}", *SFT]
    assert main(args) == 0, capsys.readouterr().err
    (run / "checkpoint" / store.MARKER).unlink()  # as a checkpoint written before markers were
    assert main([*args, "--restart"]) == 0, capsys.readouterr().err
    assert store.folder_is_ours(run / "checkpoint") and (run / "notes.md").exists()


# -- the mechanisms -------------------------------------------------------------------------------------------


def test_atomic_folder_refuses_a_folder_without_our_marker(tmp_path):
    def write(folder: Path) -> None:
        (folder / "weights").write_text("new")

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "a.txt").write_text("keep")
    with pytest.raises(UserError, match="not replaced.*a.txt.*nothing was changed"):
        store.atomic_folder(theirs, write)
    assert tree(theirs) == {"a.txt": b"keep"} and sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        store.atomic_folder(tmp_path / "file", write)
    empty = tmp_path / "empty"
    empty.mkdir()
    for target in (tmp_path / "new", empty, tmp_path / "new"):  # new, empty, then ours: each written
        store.atomic_folder(target, write)
        assert (target / "weights").read_text() == "new" and store.folder_is_ours(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left aside


def test_the_embedded_model_is_converted_only_into_a_folder_of_ours(tmp_path, monkeypatch):
    from cai_pipeline.models import embedded_dir, prepare_embedded

    monkeypatch.setenv("CAI_HOME", str(tmp_path))
    (embedded_dir() / "notes.txt").parent.mkdir(parents=True)
    (embedded_dir() / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt.*move it away"):  # at once, not after the conversion
        prepare_embedded(force=True)
    assert tree(embedded_dir()) == {"notes.txt": b"mine"}


def test_clearing_training_states_removes_only_states(tmp_path):
    from cai_pipeline.store import TrainLayout
    from cai_pipeline.train.state import TrainStates

    layout = TrainLayout(tmp_path / "logs", tmp_path / "ckpt", tmp_path / "rejects.parquet")
    states = TrainStates(layout, keep=1)
    store.atomic_folder(layout.state(2), lambda t: (t / "state.json").write_text(json.dumps({"format": 1})))
    (layout.states / ".step-00000004.tmp").mkdir()  # a save cut short
    (layout.states / ".cache").mkdir()  # the user's
    (layout.states / "step-notes").mkdir()
    (layout.states / "notes.txt").write_text("mine")
    states.tidy()
    states.clear()
    assert sorted(p.name for p in layout.states.iterdir()) == [".cache", "notes.txt", "step-notes"]


def test_the_lock_and_the_write_probe_never_touch_a_users_file(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / ".lock").write_text("my lock file, not a run's")
    one_line(capsys, main(["run", CONFIG, f"out_dir={folder}", *RUN]), "not a cai-pipeline run", ".lock")
    assert (folder / ".lock").read_text() == "my lock file, not a run's"
    (folder / ".lock").unlink()
    (folder / ".write-test").write_text("mine")
    store.RunStore(folder).check_writable()
    assert (folder / ".write-test").read_text() == "mine"


# -- files a user names --------------------------------------------------------------------------------------


def test_report_overwrites_only_a_report_of_ours(run, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    one_line(capsys, main(["report", str(run), "-o", str(prompts)]), "-o", "already exists", "--force")
    assert prompts.read_text() == '{"prompt": "hi"}\n'
    one_line(capsys, main(["report", str(run), "-o", str(run / "manifest.json")]), "manifest.json")
    one_line(capsys, main(["report", str(run), "-o", str(tmp_path)]), "is a folder")
    page = tmp_path / "r.html"
    assert main(["report", str(run), "-o", str(page)]) == 0 and main(["report", str(run), "-o", str(page)]) == 0
    assert main(["report", str(run), "-o", str(prompts), "--force"]) == 0 and "<html" in prompts.read_text()


def test_judge_eval_out_and_constitution_import_output(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    # refused before any model loads (--model names none that exists)
    one_line(capsys, main(["judge-eval", "--data", str(data), "--model", str(tmp_path / "none"), "--out",
                           str(notes)]), "--out", "already exists", "judge-eval report")
    assert notes.read_text() == "{}"
    one_line(capsys, main(["constitution", "import", "--format", "hf-recipe", str(data), "-o", str(tmp_path),
                           "--force"]), "-o", "is a folder")


def test_every_row_of_the_write_path_table_names_a_test_that_exists():
    """docs/reliability.md's table: each row names its test(s), and each named test is there."""
    import re

    text = (REPO / "docs" / "reliability.md").read_text()
    table = text.split("## What is written, replaced or deleted")[1].split("\n## ")[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| path")]
    assert len(rows) >= 20
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        if cells[0].startswith("`bench/`"):
            continue
        named = re.findall(r"`((?:tests/)?[\w/]*test_\w+\.py)?(?:::(\w+))?`", cells[3])
        assert named, f"no test for {cells[0]}"
        file = None
        for path, name in named:
            if path:  # `file.py` or `file.py::name`; a bare `::name` is another test of the file before it
                file = REPO / path if (REPO / path).is_file() else REPO / "tests" / path
            assert file is not None and file.is_file(), f"{path} (row {cells[0]})"
            assert not name or f"def {name}(" in file.read_text(), f"{file.name}::{name} (row {cells[0]})"
