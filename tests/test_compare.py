"""`cai compare`: two run folders → the constitution diff, the numbers side by side, and the rows that differ."""

from __future__ import annotations

import re

import yaml

from cai_pipeline.cli import main
from cai_pipeline.records import ReviseRecord
from cai_pipeline.store import RunStore
from tests.conftest import REPO

PROMPT = [{"role": "user", "content": "How do I get back at my [noisy] neighbour?"}]


def make_run(root, final: str, weight: float, cleaned: bool):
    store = RunStore(root)
    store.write_manifest({"package": "cai-pipeline", "model": "embedded", "seed": 0,
                          "constitution_sha256": f"{weight:064.1f}",
                          "stages": {"revise": {"in": 1, "out": 1, "rejected": {}}}})
    rounds = [{"principle_id": "violence", "critique": "c", "revision": final, "cleaned": cleaned, "kept_previous": None,
               "truncated": False, "check_before": None, "check_after": None, "skipped": False}]
    row = {"prompt_id": "p", "sample_idx": 0, "prompt": PROMPT, "initial": "Slash the tyres.", "initial_truncated": False,
           "rounds": rounds, "final": final, "final_truncated": False}
    store.write_shard("revise", 0, [row], ReviseRecord, [], {})
    data = yaml.safe_load((REPO / "constitutions" / "harmless.yaml").read_text())
    data["principles"][0]["weight"] = weight
    (store.root / "constitution.yaml").write_text(yaml.safe_dump(data))
    return store.root


def test_compare_two_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
    a = make_run(tmp_path / "a", "Talk to them calmly.", 1.0, cleaned=False)
    b = make_run(tmp_path / "b", "Write them a polite note.", 3.0, cleaned=True)
    assert main(["compare", str(a), str(b), "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "weight" in out and "3.0" in out  # the constitution change, from the run snapshots
    # run A cut no preamble, run B cut its one: the row says which is which
    assert re.search(r"revise: preamble cut rate\s*│\s*0\.00\s*│\s*1\.00\s*│", out), out
    assert "Talk to them calmly." in out and "Write them a polite note." in out
    assert "[noisy]" in out  # user text is printed as text, not read as markup


def test_compare_needs_run_folders(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and "manifest.json" in err
