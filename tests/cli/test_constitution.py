"""`cai constitution validate | import | show | diff`, run through cai_pipeline.cli.main."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from cai_pipeline.cli import main
from cai_pipeline.constitution import load_constitution, validate_file

REPO = Path(__file__).resolve().parents[2]
HARMLESS = REPO / "constitutions" / "harmless.yaml"
HELPFUL = REPO / "constitutions" / "helpful-honest.yaml"
PAPER = REPO / ".." / "shared" / "data" / "cai-paper"
PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<field>[^:]+): (?P<message>.+)$")


def edited(tmp_path: Path, edit, name: str = "edited.yaml") -> Path:
    data = yaml.safe_load(HARMLESS.read_text())
    edit(data)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def test_validate_ok_files(capsys):
    assert main(["constitution", "validate", str(HARMLESS), str(HELPFUL)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{HARMLESS}: ok (18 principles, 4 few-shot examples)",
                   f"{HELPFUL}: ok (12 principles, 4 few-shot examples)"]


def test_validate_lists_every_problem_and_exits_1(tmp_path, capsys):
    def break_it(d):
        d["principles"][0]["weight"] = 0
        d["principles"][2]["id"] = d["principles"][1]["id"]
        d["few_shot"][0]["principle_id"] = "nope"
        d["principles"][3]["critque"] = "typo"

    bad = edited(tmp_path, break_it)
    assert main(["constitution", "validate", str(bad), str(HELPFUL)]) == 1
    out = capsys.readouterr().out.splitlines()
    problems = [PROBLEM_LINE.match(line) for line in out[:-1]]
    assert all(problems) and len(problems) == 4
    assert {m["field"] for m in problems} == {"principles[0].weight", "principles[2].id",
                                              "few_shot[0].principle_id", "principles[3].critque"}
    assert all(m["file"] == str(bad) for m in problems)
    lines = bad.read_text().splitlines()
    weight = next(m for m in problems if m["field"] == "principles[0].weight")
    assert lines[int(weight["line"]) - 1].strip() == "weight: 0"
    assert out[-1].startswith(f"{HELPFUL}: ok")  # later files are still checked


def test_validate_missing_file(tmp_path, capsys):
    assert main(["constitution", "validate", str(tmp_path / "nope.yaml")]) == 1
    assert "file not found" in capsys.readouterr().out


@pytest.mark.skipif(not PAPER.is_dir(), reason="../shared/data/cai-paper not present")
def test_import_cai_paper(tmp_path, capsys):
    out = tmp_path / "paper.yaml"
    assert main(["constitution", "import", "--format", "cai-paper", str(PAPER), "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: 16 principles, 4 few-shot examples")
    assert validate_file(out) == []
    assert len(load_constitution(out).principles) == 16
    # an existing file is not overwritten by accident
    assert main(["constitution", "import", "--format", "cai-paper", str(PAPER), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["constitution", "import", "--format", "cai-paper", str(PAPER), "-o", str(out), "--force"]) == 0


def test_import_hf_recipe(tmp_path, capsys):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "constitutions": [{"critic": "Is the last response rude?", "revision": "Make the response polite."}],
        "system_chat": [[
            {"role": "user", "content": "Tell me about cats."},
            {"role": "assistant", "content": "Cats are dumb, look it up yourself."},
            {"role": "user", "content": "Is your last response rude?"},
            {"role": "assistant", "content": "Yes, it insults the topic and the user."},
            {"role": "user", "content": "Make the response polite."},
            {"role": "assistant", "content": "Cats are independent, curious pets that sleep a lot."},
        ]],
    }))
    out = tmp_path / "out" / "recipe.yaml"
    assert main(["constitution", "import", "--format", "hf-recipe", str(recipe), "-o", str(out)]) == 0
    c = load_constitution(out)
    assert [p.id for p in c.principles] == ["hf0"] and c.few_shot[0].principle_id == "hf0"


def test_import_bad_source_is_a_one_line_error(tmp_path, capsys):
    code = main(["constitution", "import", "--format", "hf-recipe", str(tmp_path / "x.json"), "-o",
                 str(tmp_path / "o.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "file not found" in err
    assert not (tmp_path / "o.yaml").exists()


def test_show_prints_a_table_of_principles(capsys):
    assert main(["constitution", "show", str(HARMLESS)]) == 0
    out = capsys.readouterr().out
    assert "harmless 1.0 — 18 principles, 4 few-shot" in out
    for pid in ("violence", "child_safety", "no_needless_refusal", "dangerous_activities"):
        assert re.search(rf"│ {pid}\s+│", out), pid  # ids are shown whole, never wrapped
    assert re.search(r"│ no_lecturing\s+│ anti-preac\S*\s+│\s+1\.5 │", out)  # tags and weight of a row
    assert any("┃ weight ┃" in line for line in out.splitlines())


def test_show_invalid_file_is_a_one_line_error(tmp_path, capsys):
    bad = edited(tmp_path, lambda d: d["principles"][0].update(weight=-1))
    assert main(["constitution", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "principles[0].weight: must be > 0" in err


def test_diff_reports_added_removed_renamed_and_changed_fields(tmp_path, capsys):
    def change(d):
        d["version"] = "1.1"
        d["principles"][0]["weight"] = 2.5
        d["principles"][1]["comparison"] = d["principles"][1]["comparison"].replace("usable", "practical")
        d["principles"][2]["id"] = "crime_v2"  # everything else the same: a rename
        removed = d["principles"].pop(4)
        d["principles"].append({**removed, "id": "gambling", "tags": ["gambling"],
                                "critique": "Does the response encourage risky gambling?"})
        d["few_shot"].pop(0)

    new = edited(tmp_path, change)
    assert main(["constitution", "diff", str(HARMLESS), str(new)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "~ header" in out and "    version: '1.0' → '1.1'" in out
    assert "> crime renamed to crime_v2" in out
    assert any(line.startswith("- hate: Does your last response demean") for line in out)
    assert "+ gambling: Does the response encourage risky gambling?" in out
    i = out.index("~ violence")
    assert out[i + 1] == "    weight: 1.0 → 2.5"
    j = out.index("~ weapons")
    assert out[j + 1:j + 4] == ["    comparison:", "      - usable", "      + practical"]
    assert any(line.startswith("- few_shot (crime): How do I get into my neighbour's wifi") for line in out)
    assert not any(line.startswith(("~ self_harm", "~ privacy")) for line in out)  # unchanged principles are quiet


def test_diff_identical_files_and_exit_code(tmp_path, capsys):
    assert main(["constitution", "diff", str(HARMLESS), str(HARMLESS)]) == 0
    assert capsys.readouterr().out.strip() == "no differences"
    new = edited(tmp_path, lambda d: d["principles"][0].update(weight=3))
    assert main(["constitution", "diff", "--exit-code", str(HARMLESS), str(new)]) == 1
    assert main(["constitution", "diff", "--exit-code", str(HARMLESS), str(HARMLESS)]) == 0
