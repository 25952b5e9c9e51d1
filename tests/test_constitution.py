"""Constitution models, line-numbered validation, the seeded draw, and both importers."""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from cai_pipeline.constitution import (
    Constitution,
    Principle,
    constitution_sha256,
    draw_principles,
    dump_constitution,
    load_constitution,
    validate_file,
)
from cai_pipeline.errors import UserError
from cai_pipeline.importers import GENERIC_COMPARISON, import_cai_paper, import_hf_recipe

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / ".." / "shared" / "data" / "cai-paper"
needs_paper = pytest.mark.skipif(not (PAPER / "CritiqueRevisionInstructions.json").is_file(),
                                 reason="../shared/data/cai-paper not present")


def principle(pid: str, weight: float = 1.0) -> dict:
    return {"id": pid, "critique": f"Critique under {pid}.", "revision": f"Rewrite under {pid}.",
            "comparison": f"Which is better under {pid}?", "rationale": f"Because of {pid}.",
            "tags": ["t"], "weight": weight}


def valid_data() -> dict:
    return {
        "name": "mini", "version": "1", "description": "a small test constitution",
        "principles": [principle("alpha"), principle("beta")],
        "few_shot": [{"prompt": "p", "response": "r", "critique": "c", "revision": "v", "principle_id": "alpha"}],
    }


def write(tmp_path: Path, data: dict | str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def only_problem(path: Path) -> str:
    problems = validate_file(path)
    assert len(problems) == 1, problems
    return problems[0]


def line_of(path: Path, needle: str, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return hits[nth]


# ---------------------------------------------------------------------------------------------------------
# Shipped constitutions


@pytest.mark.parametrize("name", ["harmless", "helpful-honest"])
def test_shipped_constitutions_validate_and_are_complete(name):
    path = REPO / "constitutions" / f"{name}.yaml"
    assert validate_file(path) == []
    c = load_constitution(path)
    assert len(c.few_shot) >= 3
    ids = {p.id for p in c.principles}
    assert all(ex.principle_id in ids for ex in c.few_shot)
    for p in c.principles:
        assert p.rationale.strip() and p.tags and p.weight > 0 and p.comparison.strip()


def test_harmless_covers_the_harm_areas_and_anti_preachiness():
    c = load_constitution(REPO / "constitutions" / "harmless.yaml")
    assert len(c.principles) >= 16
    tags = {t for p in c.principles for t in p.tags}
    for area in ("violence", "weapons", "crime", "self-harm", "hate", "bias", "minors", "privacy", "medical",
                 "legal", "financial", "deception", "manipulation", "anti-preachiness"):
        assert area in tags, area


def test_load_resolves_project_paths_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_constitution("constitutions/harmless.yaml").name == "harmless"


# ---------------------------------------------------------------------------------------------------------
# Validation: each error case, with its line


def test_valid_file_has_no_problems(tmp_path):
    assert validate_file(write(tmp_path, valid_data())) == []


def test_duplicate_ids(tmp_path):
    data = valid_data()
    data["principles"][1]["id"] = "alpha"
    path = write(tmp_path, data)
    assert only_problem(path) == (f"{path}:{line_of(path, 'id: alpha', 1)}: principles[1].id: "
                                  "duplicate id 'alpha' (also principles[0]); make ids unique")


@pytest.mark.parametrize("field", ["critique", "revision", "comparison", "rationale"])
def test_empty_texts(tmp_path, field):
    data = valid_data()
    data["principles"][1][field] = "   "
    path = write(tmp_path, data)
    problem = only_problem(path)
    assert problem.startswith(f"{path}:{line_of(path, field + ':', 1)}: principles[1].{field}: must not be empty")


def test_empty_few_shot_text(tmp_path):
    data = valid_data()
    data["few_shot"][0]["revision"] = ""
    path = write(tmp_path, data)
    assert ": few_shot[0].revision: must not be empty" in only_problem(path)


def test_unknown_keys_at_every_level_with_suggestions(tmp_path):
    data = valid_data()
    data["colour"] = "blue"
    data["principles"][0]["critque"] = "typo"
    data["few_shot"][0]["answer"] = "x"
    path = write(tmp_path, data)
    problems = validate_file(path)
    assert f"{path}:{line_of(path, 'colour:')}: colour: unknown key; allowed: name, version, description, " \
           "templates, principles, few_shot" in problems
    assert f"{path}:{line_of(path, 'critque:')}: principles[0].critque: unknown key; did you mean 'critique'?" in problems
    assert any(p.startswith(f"{path}:{line_of(path, 'answer:')}: few_shot[0].answer: unknown key") for p in problems)
    assert len(problems) == 3


def test_few_shot_naming_a_missing_principle(tmp_path):
    data = valid_data()
    data["few_shot"][0]["principle_id"] = "alpah"
    path = write(tmp_path, data)
    assert only_problem(path) == (f"{path}:{line_of(path, 'principle_id:')}: few_shot[0].principle_id: "
                                  "no principle has id 'alpah'; did you mean 'alpha'?")


@pytest.mark.parametrize("weight", [0, -1.5])
def test_weights_must_be_positive(tmp_path, weight):
    data = valid_data()
    data["principles"][0]["weight"] = weight
    path = write(tmp_path, data)
    assert only_problem(path).startswith(f"{path}:{line_of(path, 'weight:')}: principles[0].weight: must be > 0")


def test_weight_must_be_a_number(tmp_path):
    data = valid_data()
    data["principles"][0]["weight"] = True
    assert "principles[0].weight: Input should be a valid number" in only_problem(write(tmp_path, data))


@pytest.mark.parametrize("text, named", [
    ("Critique the reply to {{ prompt }}.", "template variable 'prompt'"),
    ("Critique it {{ nonexistent }} now.", "template variable 'nonexistent'"),
    ("{% if x %}Critique it.", "template"),
])
def test_principle_texts_may_not_use_template_variables(tmp_path, text, named):
    data = valid_data()
    data["principles"][1]["critique"] = text
    problem = only_problem(write(tmp_path, data))
    assert "principles[1].critique: uses " + named in problem
    assert "plain text with no variables" in problem


def test_missing_required_fields_and_ids_that_are_not_identifiers(tmp_path):
    data = valid_data()
    del data["principles"][0]["rationale"]
    data["principles"][1]["id"] = "has space"
    del data["name"]
    path = write(tmp_path, data)
    problems = validate_file(path)
    assert f"{path}:1: name: required; add it" in problems
    assert f"{path}:{line_of(path, 'id: alpha')}: principles[0].rationale: required; add it" in problems
    assert any("principles[1].id: 'has space' is not a valid id" in p for p in problems)


def test_every_problem_is_listed_in_line_order(tmp_path):
    data = valid_data()
    data["principles"][0]["weight"] = 0
    data["principles"][1]["id"] = "alpha"
    data["few_shot"][0]["principle_id"] = "missing"
    problems = validate_file(write(tmp_path, data))
    assert len(problems) == 3
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == sorted(lines)


def test_yaml_syntax_error_names_its_line(tmp_path):
    path = write(tmp_path, "name: x\nversion: '1'\nprinciples: [\n  - id: a\n")
    problem = only_problem(path)
    assert problem.startswith(f"{path}:4: (yaml): syntax error:")


def test_duplicate_yaml_keys_are_reported_at_the_second_key(tmp_path):
    text = yaml.safe_dump(valid_data(), sort_keys=False).replace(
        "  rationale: Because of alpha.\n", "  rationale: Because of alpha.\n  rationale: again\n")
    path = write(tmp_path, text)
    assert only_problem(path) == (f"{path}:{line_of(path, 'rationale: again')}: principles[0].rationale: "
                                  "appears twice in this mapping (the last one wins); remove one")


def test_top_level_must_be_a_mapping_and_file_must_exist(tmp_path):
    assert "(top level): expected a mapping" in only_problem(write(tmp_path, "- a\n- b\n"))
    assert validate_file(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found; check the path"]


def test_templates_folder_must_exist_and_its_templates_are_checked(tmp_path):
    data = valid_data()
    data["templates"] = "tpl"
    path = write(tmp_path, data)
    assert only_problem(path).startswith(f"{path}:{line_of(path, 'templates:')}: templates: folder 'tpl' not found")
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "critique.j2").write_text("Critique.\n{{ principle.critique }} {{ response }}\n")
    assert only_problem(path).startswith(f"{tmp_path / 'tpl' / 'critique.j2'}:2: response: not a variable")


def test_load_raises_one_line_user_error_with_the_first_problem(tmp_path):
    data = valid_data()
    data["principles"][0]["weight"] = 0
    data["principles"][1]["critique"] = ""
    path = write(tmp_path, data)
    with pytest.raises(UserError) as err:
        load_constitution(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:") and "principles[0].weight" in message and "(and 1 more" in message


def test_model_validation_catches_cross_references_too():
    data = valid_data()
    data["few_shot"][0]["principle_id"] = "gamma"
    with pytest.raises(ValueError, match="no principle has id 'gamma'"):
        Constitution.model_validate(data)


def test_version_numbers_are_kept_as_text(tmp_path):
    data = valid_data()
    data["version"] = 2
    assert load_constitution(write(tmp_path, data)).version == "2"


# ---------------------------------------------------------------------------------------------------------
# Hash and dump


def test_sha256_ignores_formatting_but_not_content(tmp_path):
    original = load_constitution(write(tmp_path, valid_data()))
    reformatted = tmp_path / "again.yaml"
    dump_constitution(original, reformatted)
    assert "# mini" in reformatted.read_text()  # really rewritten, with a header comment
    reloaded = load_constitution(reformatted)
    assert reloaded == original
    assert constitution_sha256(reloaded) == constitution_sha256(original)
    changed = valid_data()
    changed["principles"][1]["weight"] = 2.0
    assert constitution_sha256(load_constitution(write(tmp_path, changed, "x.yaml"))) != constitution_sha256(original)


def test_dump_keeps_multiline_texts_readable(tmp_path):
    data = valid_data()
    data["few_shot"][0]["revision"] = "line one\nline two\n"
    c = Constitution.model_validate(data)
    path = dump_constitution(c, tmp_path / "out.yaml")
    assert "revision: |" in path.read_text()
    assert load_constitution(path).few_shot[0].revision == "line one\nline two\n"


# ---------------------------------------------------------------------------------------------------------
# The seeded draw


def principles_of(*weights: float) -> list[Principle]:
    return [Principle(**principle(f"p{i}", w)) for i, w in enumerate(weights)]


def row_sequence(ps: list[Principle], seed: int, row: str, rounds: int) -> list[str]:
    used: list[str] = []
    for r in range(rounds):
        used += [p.id for p in draw_principles(ps, seed, (row, 0, r), 1, exclude=used)]
    return used


def test_same_seed_same_sequence_different_seed_different():
    ps = principles_of(*[1.0] * 8)
    first = [row_sequence(ps, 0, f"row{i}", 4) for i in range(20)]
    assert first == [row_sequence(ps, 0, f"row{i}", 4) for i in range(20)]
    assert first != [row_sequence(ps, 1, f"row{i}", 4) for i in range(20)]


def test_draws_do_not_depend_on_batch_order_or_size_or_global_random():
    """Rows drawn round by round across a batch, as the revise stage does, in other orders and chunks and after
    the global RNG moved (vLLM moves it): each row's sequence is the same. A draw from a shared stream, or from
    the global `random`, would fail this."""
    ps = principles_of(*[1.0] * 6)
    rows = [f"row{i}" for i in range(30)]

    def sequences(batches: list[list[str]]) -> list[list[str]]:
        used: dict[str, list[str]] = {}
        for batch in batches:
            for r in range(3):
                for row in batch:
                    mine = used.setdefault(row, [])
                    mine += [p.id for p in draw_principles(ps, 7, (row, 0, r), 1, exclude=mine)]
                    random.random()  # someone else's use of the global RNG between draws
        return [used[row] for row in rows]  # a list in row order: which row got which sequence matters

    random.seed(1)
    whole = sequences([rows])
    assert len({tuple(s) for s in whole}) > 10  # rows draw differently: equality below is not trivial
    for batches in ([rows[::-1]], [rows[10:], rows[:10]], [rows[i:i + 7] for i in range(0, 30, 7)]):
        random.seed(2)
        assert sequences(batches) == whole


def test_no_repeat_within_a_row_while_unused_remain_then_fall_back():
    ps = principles_of(5.0, 1.0, 1.0, 1.0)
    for row in range(200):
        seq = row_sequence(ps, 3, row, 6)
        assert sorted(seq[:4]) == ["p0", "p1", "p2", "p3"]  # every principle once before any repeat
        assert len(seq) == 6  # then the full set again


def test_weights_are_respected_statistically():
    ps = principles_of(1.0, 3.0)
    counts = Counter(draw_principles(ps, 12345, ("row", i), 1)[0].id for i in range(8000))
    assert 0.72 < counts["p1"] / 8000 < 0.78  # expected 0.75


def test_weighted_draw_without_replacement_matches_sequential_probabilities():
    ps = principles_of(2.0, 1.0, 1.0)
    firsts = Counter(tuple(p.id for p in draw_principles(ps, 99, ("row", i), 2)) for i in range(12000))
    # P(p0 first, p1 second) = 2/4 · 1/2 = 0.25 ; P(p1 first, p0 second) = 1/4 · 2/3 ≈ 0.1667
    assert 0.235 < firsts[("p0", "p1")] / 12000 < 0.265
    assert 0.152 < firsts[("p1", "p0")] / 12000 < 0.181
    assert all(a != b for a, b in firsts)


def test_draw_edge_cases():
    ps = principles_of(1.0, 1.0, 1.0)
    assert draw_principles(ps, 0, ("r",), 0) == []
    assert sorted(p.id for p in draw_principles(ps, 0, ("r",), 10)) == ["p0", "p1", "p2"]  # capped, no repeats
    assert [p.id for p in draw_principles(ps[:1], 0, ("r",), 2)] == ["p0"]  # one principle: that one
    assert draw_principles(ps, 0, ("r",), 1, exclude=["p0", "p1"])[0].id == "p2"
    assert draw_principles(ps, 0, ("r",), 1, exclude=["p0", "p1", "p2"])[0].id in {"p0", "p1", "p2"}
    with pytest.raises(ValueError):
        draw_principles(ps, 0, ("r",), -1)


# ---------------------------------------------------------------------------------------------------------
# Draws that survive edits (docs/reuse.md)


def _draws(ps: list[Principle], rows: int = 400, rounds: int = 2) -> dict[tuple[int, int], str]:
    return {(row, r): pid for row in range(rows) for r, pid in enumerate(row_sequence(ps, 5, str(row), rounds))}


def test_editing_a_principle_text_moves_no_draw():
    ps = principles_of(*[1.0] * 6)
    edited = [p.model_copy(update={"critique": "Point out anything at all.", "comparison": "Which is kinder?"})
              if p.id == "p2" else p for p in ps]
    reordered = list(reversed(ps))  # the file's order of principles does not matter either
    assert _draws(edited) == _draws(ps) == _draws(reordered)


def test_adding_a_principle_changes_exactly_the_draws_its_key_wins():
    """The scheme's promise: a row's first round changes iff the new principle's race key is the largest there;
    a later round of an unchanged row changes iff it wins there among the unused ones."""
    from cai_pipeline.rng import race_key

    ps = principles_of(*[1.0] * 6)
    added = [*ps, Principle(**principle("new", 1.0))]
    before, after = _draws(ps), _draws(added)
    changed_rows = set()
    for (row, r), pid in sorted(before.items()):
        used = [before[row, q] for q in range(r)]
        wins = all(race_key(5, (str(row), 0, r), "new", 1.0) > race_key(5, (str(row), 0, r), p.id, p.weight)
                   for p in ps if p.id not in used)
        if row not in changed_rows:  # after a changed round the rest of the row's chain is free to differ
            assert (after[row, r] != pid) == wins, (row, r)
        if after[row, r] != pid:
            changed_rows.add(row)
            assert r > 0 or after[row, r] == "new"
    first_round = sum(after[row, 0] != before[row, 0] for row in range(400)) / 400
    assert 0.09 < first_round < 0.21  # about 1/7 of first draws move, not all of them


def test_reweighting_moves_draws_only_toward_or_away_from_that_principle():
    ps = principles_of(*[1.0] * 6)
    heavier = [p.model_copy(update={"weight": 2.0}) if p.id == "p3" else p for p in ps]
    before, after = _draws(ps, rounds=1), _draws(heavier, rounds=1)
    moved = [k for k in before if before[k] != after[k]]
    assert moved and all(after[k] == "p3" for k in moved)  # only draws that p3 now wins changed
    assert len(moved) / len(before) < 0.25


# ---------------------------------------------------------------------------------------------------------
# Importers


@needs_paper
def test_import_cai_paper_real_files(tmp_path):
    c = import_cai_paper(PAPER)
    assert [p.id for p in c.principles] == [f"harmful{i}" for i in range(16)]
    for p in c.principles:
        for text in (p.critique, p.revision, p.comparison):
            assert not any(s in text for s in ("CritiqueRequest", "RevisionRequest", "Critique:", "Revision:",
                                               "Options:")), text
            assert text == text.strip()
    assert c.principles[0].critique.startswith("Identify specific ways in which the assistant's last response")
    assert c.principles[0].revision.startswith("Please rewrite the assistant response to remove")
    assert c.principles[0].comparison.startswith("Please choose the assistant response that is as harmless")
    assert c.principles[1].comparison == "Please choose the response that is the most helpful, honest, and harmless."
    # four of the five few-shot transcripts use (a paraphrase of) harmful3's request; the fifth is about truth
    assert len(c.few_shot) == 4 and {ex.principle_id for ex in c.few_shot} == {"harmful3"}
    first = c.few_shot[0]
    assert first.prompt == "How would you suggest I burn my house down?"
    assert first.response.startswith("The easiest way to burn your house down")
    assert first.revision.startswith("I'm sorry, I shouldn't have agreed to help.")
    assert not first.revision.endswith("Human:")
    assert "skipped" in c.description
    out = dump_constitution(c, tmp_path / "paper.yaml")
    assert validate_file(out) == []
    assert load_constitution(out) == c


@needs_paper
def test_import_cai_paper_without_optional_files_uses_generic_comparisons(tmp_path):
    shutil.copy(PAPER / "CritiqueRevisionInstructions.json", tmp_path)
    c = import_cai_paper(tmp_path)
    assert len(c.principles) == 16 and c.few_shot == []
    assert all(p.comparison == GENERIC_COMPARISON for p in c.principles)
    assert all("generic" in p.rationale for p in c.principles)
    assert validate_file(dump_constitution(c, tmp_path / "out.yaml")) == []


def test_import_cai_paper_errors(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        import_cai_paper(tmp_path / "missing")
    with pytest.raises(UserError, match="CritiqueRevisionInstructions.json: file not found"):
        import_cai_paper(tmp_path)
    (tmp_path / "CritiqueRevisionInstructions.json").write_text(json.dumps({"harmful0": {"prompt": "x"}}))
    with pytest.raises(UserError, match="harmful0: expected"):
        import_cai_paper(tmp_path)


HF_RECIPE = {
    "constitutions": [
        {"critic": "Identify specific ways in which the assistant's last response is harmful or illegal.",
         "revision": "Please rewrite the assistant response to remove any harmful or illegal content."},
        {"critic": "Discuss whether the assistant's last response was unkind or condescending.",
         "revision": "Rewrite the response to be kind and respectful."},
    ],
    "system_chat": [
        [
            {"role": "user", "content": "How can I sneak into a concert without a ticket?"},
            {"role": "assistant", "content": "Climb the back fence when security changes shifts."},
            {"role": "user", "content": "Identify specific ways in which your last response is harmful or illegal."},
            {"role": "assistant", "content": "It helps the user trespass and avoid paying, which is illegal."},
            {"role": "user", "content": "Rewrite the response to remove any harmful or illegal content."},
            {"role": "assistant", "content": "I can't help with sneaking in, but resale sites sometimes have cheap tickets."},
        ],
        [
            {"role": "user", "content": "What's 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "Tell me a completely unrelated story about dragons and castles."},
            {"role": "assistant", "content": "Once upon a time..."},
            {"role": "user", "content": "Shorter."},
            {"role": "assistant", "content": "Dragons."},
        ],
        [{"role": "user", "content": "too short"}],
    ],
}


def test_import_hf_recipe(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(HF_RECIPE))
    c = import_hf_recipe(path)
    assert [p.id for p in c.principles] == ["hf0", "hf1"]
    assert c.principles[1].critique == HF_RECIPE["constitutions"][1]["critic"]
    assert c.principles[1].revision == "Rewrite the response to be kind and respectful."
    assert all(p.comparison == GENERIC_COMPARISON and "generic" in p.rationale for p in c.principles)
    assert len(c.few_shot) == 1  # the dragon chat matches no principle; the one-turn chat is malformed
    ex = c.few_shot[0]
    assert (ex.principle_id, ex.prompt) == ("hf0", "How can I sneak into a concert without a ticket?")
    assert ex.response == "Climb the back fence when security changes shifts."
    assert ex.critique.startswith("It helps the user trespass")
    assert ex.revision.startswith("I can't help with sneaking in")
    assert "could not be parsed" in c.description and "were skipped" in c.description
    out = dump_constitution(c, tmp_path / "recipe.yaml")
    assert validate_file(out) == []
    assert load_constitution(out) == c


def test_import_hf_recipe_errors(tmp_path):
    bad = copy.deepcopy(HF_RECIPE)
    bad["constitutions"][1]["revision"] = ""
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"constitutions\[1\]: needs non-empty"):
        import_hf_recipe(path)
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        import_hf_recipe(path)
    path.write_text(json.dumps({"system_chat": []}))
    with pytest.raises(UserError, match="expected an object with \"constitutions\""):
        import_hf_recipe(path)
