"""Prompt templates: rendering, StrictUndefined, the sandbox, custom folders, hashes and static checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from cai_pipeline.constitution import Principle, load_constitution
from cai_pipeline.errors import UserError
from cai_pipeline.templates import (
    JUDGE_PREFIX,
    PROMPTS_DIR,
    TEMPLATE_VARIABLES,
    TemplateSet,
    check_folder,
    render,
    template_hashes,
    transcript,
)

PRINCIPLE = Principle(id="kind", critique="Point out anything unkind in the last response.",
                      revision="Rewrite the response to be kind.", comparison="Which response is kinder?",
                      rationale="Kindness matters.", tags=["tone"], weight=2.0)
JUDGE_VARS = {"conversation": "Human: Is the sky green?", "question": PRINCIPLE.comparison,
              "response_a": "No, it is blue.", "response_b": "Yes, obviously."}


def folder_with(tmp_path: Path, **files: str) -> Path:
    folder = tmp_path / "tpl"
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.j2").write_text(text, encoding="utf-8")
    return folder


def test_critique_and_revision_insert_the_principle_text():
    critique = TemplateSet().render("critique", principle=PRINCIPLE)
    assert critique.startswith(PRINCIPLE.critique)
    assert "{{" not in critique and "{#" not in critique  # comments and tags are gone
    revision = render("revision.j2", principle=PRINCIPLE)
    assert revision.startswith(PRINCIPLE.revision)
    assert "only the rewritten response" in revision and "no preamble" in revision


def test_judge_templates_show_both_responses_and_the_question():
    for name in ("judge", "judge_reasoning"):
        text = render(name, **JUDGE_VARS)
        assert JUDGE_VARS["conversation"] in text and PRINCIPLE.comparison in text
        a, b = text.index("(A) No, it is blue."), text.index("(B) Yes, obviously.")
        assert text.index(PRINCIPLE.comparison) < a < b
    assert "A or B" in render("judge", **JUDGE_VARS)
    assert "step by step" in render("judge_reasoning", **JUDGE_VARS)


def test_judge_prefix_template_matches_the_constant():
    assert JUDGE_PREFIX == "The answer is: ("
    assert TemplateSet().judge_prefix() == JUDGE_PREFIX


def test_templates_stay_short_for_a_small_context():
    # The default model has a 4096-token budget; the wrapping text must leave room for the conversation.
    empty = {k: "" for k in JUDGE_VARS}
    assert len(render("judge_reasoning", **empty)) < 300
    assert len(render("critique", principle=PRINCIPLE)) - len(PRINCIPLE.critique) < 150


def test_declared_variables_are_exactly_what_the_shipped_templates_use():
    assert check_folder(PROMPTS_DIR) == []
    assert set(TEMPLATE_VARIABLES) == {p.stem for p in PROMPTS_DIR.glob("*.j2")}


def test_undefined_variable_is_a_one_line_user_error():
    with pytest.raises(UserError) as err:
        render("judge", question="q", response_a="a", response_b="b")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{PROMPTS_DIR / 'judge.j2'}:")
    assert "'conversation' is undefined" in message and "this template gets: conversation" in message


def test_misspelt_attribute_is_an_error_not_an_empty_string(tmp_path):
    folder = folder_with(tmp_path, critique="Intro\n{{ principle.critque }}\n")
    with pytest.raises(UserError, match=r"critique.j2:2: .*has no attribute 'critque'"):
        TemplateSet(folder).render("critique", principle=PRINCIPLE)


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ principle.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ principle.model_dump.__func__ }}",
])
def test_sandbox_escape_is_refused_cleanly(tmp_path, source):
    folder = folder_with(tmp_path, evil=f"harmless line\n{source}\n")
    with pytest.raises(UserError) as err:
        TemplateSet(folder).render("evil", principle=PRINCIPLE)
    message = str(err.value)
    assert message.startswith(f"{folder / 'evil.j2'}:2: refused:") and "unsafe" in message
    assert "\n" not in message


def test_syntax_error_names_file_and_line(tmp_path):
    folder = folder_with(tmp_path, broken="ok\n{% if principle %}\nno end\n")
    with pytest.raises(UserError, match=r"broken.j2:\d+: template syntax error: Unexpected end of template"):
        TemplateSet(folder).render("broken", principle=PRINCIPLE)


def test_unknown_template_and_missing_folder(tmp_path):
    with pytest.raises(UserError, match="template 'nope.j2' not found .* known: critique, judge"):
        render("nope")
    with pytest.raises(UserError, match="template folder not found"):
        TemplateSet(tmp_path / "absent")


def test_custom_folder_overrides_by_name_and_falls_back_for_the_rest(tmp_path):
    folder = folder_with(tmp_path, critique="CUSTOM: {{ principle.critique | upper }}")
    ts = TemplateSet(folder)
    assert ts.render("critique", principle=PRINCIPLE) == "CUSTOM: " + PRINCIPLE.critique.upper()
    assert ts.render("judge", **JUDGE_VARS) == render("judge", **JUDGE_VARS)
    assert ts.path_of("critique") == folder / "critique.j2"
    assert ts.path_of("revision") == PROMPTS_DIR / "revision.j2"


def test_template_hashes_reflect_the_files_in_use(tmp_path):
    default = template_hashes()
    assert set(default) == {"critique.j2", "revision.j2", "judge.j2", "judge_reasoning.j2", "judge_prefix.j2",
                            "judge_shared.j2", "judge_shared_reasoning.j2", "refusal.j2", "violation.j2"}
    assert default["judge.j2"] == hashlib.sha256((PROMPTS_DIR / "judge.j2").read_bytes()).hexdigest()
    custom = TemplateSet(folder_with(tmp_path, critique="{{ principle.critique }}")).template_hashes()
    assert custom["critique.j2"] == hashlib.sha256(b"{{ principle.critique }}").hexdigest() != default["critique.j2"]
    assert {k: v for k, v in custom.items() if k != "critique.j2"} == \
        {k: v for k, v in default.items() if k != "critique.j2"}


def test_constitution_template_folder_is_relative_to_its_file(tmp_path, monkeypatch):
    folder_with(tmp_path, revision="Mine: {{ principle.revision }}")
    data = yaml.safe_load((PROMPTS_DIR.parent / "constitutions" / "helpful-honest.yaml").read_text())
    data["templates"] = "tpl"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(PROMPTS_DIR.parent)  # the folder is found relative to the file, not the cwd
    c = load_constitution(path)
    assert TemplateSet.for_constitution(c).render("revision", principle=c.principles[0]) == \
        "Mine: " + c.principles[0].revision


def test_check_folder_flags_unknown_variables_attributes_and_internals(tmp_path):
    folder = folder_with(
        tmp_path,
        critique="Critique.\n{{ principle.critque }}\n",
        judge="{{ conversation }}\n{{ question }} {{ answer }}\n",
        helper="{{ ''.__class__ }}\n",
    )
    problems = check_folder(folder)
    assert f"{folder / 'critique.j2'}:2: principle.critque: principles have no field 'critque'; fields: " \
           "check, comparison, critique, id, rationale, revision, tags, violation, weight" in problems
    assert any(p.startswith(f"{folder / 'judge.j2'}:2: answer: not a variable of judge.j2") for p in problems)
    assert any(p.startswith(f"{folder / 'helper.j2'}:1: __class__: underscore attributes") for p in problems)
    assert len(problems) == 3


def test_transcript_formats_chat_messages():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi \n"},
                {"role": "assistant", "content": "Hello."}]
    assert transcript(messages) == "System: Be brief.\n\nHuman: Hi\n\nAssistant: Hello."


def test_including_a_missing_template_is_a_user_error(tmp_path):
    folder = folder_with(tmp_path, outer='{% include "gone.j2" %}')
    with pytest.raises(UserError, match="includes template 'gone.j2', which is in none of the template folders"):
        TemplateSet(folder).render("outer")
