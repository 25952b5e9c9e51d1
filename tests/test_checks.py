"""Checkable principles: each built-in checker on hand-made texts, the user's own function, and the
constitution file's `check:` key with file:line errors for regexes that do not compile and functions that do
not import."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cai_pipeline.checks import CheckSpec, run_check, word_count
from cai_pipeline.constitution import load_constitution, validate_file
from cai_pipeline.errors import UserError

CONV = [{"role": "user", "content": "Tell me about cats."}]


def verdict(text: str, **spec):
    return run_check(CheckSpec(**spec), CONV, text)


def test_word_limits_count_whitespace_separated_words():
    text = "Cats are  small,\ncurious animals."  # 5 words however the whitespace runs
    assert word_count(text) == 5
    assert verdict(text, max_words=5).passed
    failed = verdict(text, max_words=4)
    assert not failed.passed and "5 words, more than max_words 4" in failed.reason
    assert verdict(text, min_words=5).passed
    assert "fewer than min_words 6" in verdict(text, min_words=6).reason
    assert verdict("", min_words=0).passed


def test_max_chars():
    assert verdict("abcde", max_chars=5).passed
    assert "6 characters" in verdict("abcdef", max_chars=5).reason


def test_forbid_and_require_are_regex_searches():
    spec = {"forbid": [r"(?i)^\s*(sure|as an ai)\b"], "require": [r"\?\s*$"]}
    assert verdict("Cats purr. Do you have one?", **spec).passed
    opened = verdict("Sure! Cats purr. Do you have one?", **spec)
    assert not opened.passed and "forbidden" in opened.reason and "'Sure'" in opened.reason
    no_question = verdict("Cats purr.", **spec)
    assert not no_question.passed and "does not match required" in no_question.reason
    both = verdict("As an AI, I like cats.", **spec)
    assert both.reason.count(";") == 1  # every failure is named, not only the first


def test_markdown_list_and_exclamation_patterns():
    spec = {"forbid": [r"(?m)^\s*(?:[-*•]|\d+[.)])\s", "!"]}
    assert verdict("Cats sleep a lot. They - like us - dream.", **spec).passed
    assert not verdict("Tips:\n- feed them\n- pet them", **spec).passed
    assert not verdict("1. Feed them.\n2. Pet them.", **spec).passed
    assert not verdict("Cats are great!", **spec).passed


@pytest.mark.parametrize("text", ["write to jane.doe@example.com", "call +1 415-555-0132 today",
                                  "call (415) 555 0132", "card 4111 1111 1111 1111"])
def test_pii_found(text):
    result = verdict(text, pii=True)
    assert not result.passed and result.reason.startswith("contains")


@pytest.mark.parametrize("text", ["Cats were domesticated around 7500 BC.", "In 2024 there were 3 cats.",
                                  "Version 1.2.3 is out", "email me at the office"])
def test_pii_not_found(text):
    assert verdict(text, pii=True).passed


def test_an_empty_check_is_refused():
    with pytest.raises(ValidationError, match="empty check"):
        CheckSpec()


def constitution(folder: Path, check: str, comparison: bool = True) -> Path:
    lines = ["name: t", "version: 1", "principles:", "  - id: p", "    critique: Critique it.",
             "    revision: Rewrite it.", "    rationale: Because."]
    if comparison:
        lines.append("    comparison: Which is better?")
    lines += ["    check:"] + [f"      {line}" for line in check.splitlines()]
    path = folder / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_regex_is_one_line_with_its_file_and_line(tmp_path):
    path = constitution(tmp_path, 'max_words: 3\nforbid: ["ok", "(unclosed"]')
    [problem] = validate_file(path)
    assert problem.startswith(f"{path}:11: principles[0].check.forbid[1]: regex /(unclosed/ does not compile")
    with pytest.raises(UserError, match="does not compile"):
        load_constitution(path)


def test_user_function_is_loaded_from_the_constitutions_folder_and_said_aloud(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(
        "def short(conversation, response):\n"
        "    assert conversation[-1]['role'] == 'user'\n"
        "    return len(response) < 10, 'too long for short()'\n")
    c = load_constitution(constitution(tmp_path, 'python: "mine:short"', comparison=False))
    assert "running your code short()" in capsys.readouterr().err
    [p] = c.principles
    assert p.comparison is None  # check-only
    assert p.run_check(CONV, "Meow.").passed
    failed = p.run_check(CONV, "A long answer about cats.")
    assert not failed.passed and failed.reason == "mine:short: too long for short()"


@pytest.mark.parametrize("ref, message", [
    ('"mine:missing"', "has no function 'missing'"),
    ('"nothere:f"', "no file"),
    ('"broken:f"', "broken.py:2: syntax error"),
    ('"raises:f"', "importing it failed: RuntimeError: boom"),
    ('"../outside:f"', "inside the constitution's folder"),
    ('"no colon"', "is not 'module:function'"),
])
def test_import_errors_are_one_line_with_file_and_line(tmp_path, ref, message):
    (tmp_path / "mine.py").write_text("def f(c, r):\n    return True\n")
    (tmp_path / "broken.py").write_text("x = 1\ndef f(:\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('boom')\n")
    path = constitution(tmp_path, f"python: {ref}")
    [problem] = validate_file(path)
    assert problem.startswith(f"{path}:10: principles[0].check.python: ") and message in problem


def test_comparison_is_required_only_without_a_check(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nversion: 1\nprinciples:\n  - id: p\n    critique: c\n    revision: r\n"
                    "    rationale: x\n")
    [problem] = validate_file(path)
    assert "comparison: required unless the principle has a check" in problem


def test_dump_diff_and_import_know_the_key(tmp_path):
    import json

    from cai_pipeline.constitution import dump_constitution
    from cai_pipeline.constitution_diff import diff_constitutions
    from cai_pipeline.importers import import_hf_recipe

    old = load_constitution(constitution(tmp_path, "max_words: 50\nforbid: ['!']"))
    again = load_constitution(dump_constitution(old, tmp_path / "again.yaml"))
    assert again == old and again.principles[0].check.forbid == ["!"]
    new = old.model_copy(deep=True)
    new.principles[0].check.max_words = 40
    new.principles[0].comparison = None
    assert diff_constitutions(old, new) == ["~ p", "    comparison: 'Which is better?' → None",
                                            "    check.max_words: 50 → 40"]
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"constitutions": [
        {"critic": "Too long?", "revision": "Shorten it.", "check": {"max_words": 30}},
        {"critic": "Rude?", "revision": "Be kind."}]}))
    imported = import_hf_recipe(recipe)
    assert imported.principles[0].check.max_words == 30 and imported.principles[1].check is None
    recipe.write_text(json.dumps({"constitutions": [{"critic": "c", "revision": "r", "check": {"forbid": ["("]}}]}))
    with pytest.raises(UserError, match=r"constitutions\[0\].check.forbid.0: regex /\(/ does not compile"):
        import_hf_recipe(recipe)
