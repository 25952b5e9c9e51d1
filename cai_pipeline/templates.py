"""Prompt templates: jinja2 in a sandbox with StrictUndefined, over the project's prompts/ folder and an
optional extra folder (a constitution's own `templates`), whose files override the project's by name.

Templates and the variables each receives (a template may use fewer, never others):

  critique.j2          principle, check             the user turn asking for a critique (principle.critique);
                                                    check: the drawn principle's check on the response,
                                                    {passed, reason}, or None when it has no check
  revision.j2          principle, check             the user turn asking for a rewrite (principle.revision)
  judge.j2             conversation, question,      the judge's user turn; the engine then scores the next
                       response_a, response_b       token after the assistant prefix JUDGE_PREFIX
  judge_reasoning.j2   (same as judge.j2)           asks for step-by-step reasoning first
  judge_shared.j2      (same as judge.j2)           judge.layout shared_prefix: conversation and both responses
                                                    first, the question last (one prefix per pair and order)
  judge_shared_reasoning.j2  (same as judge.j2)     the same layout with reasoning first
  judge_prefix.j2      (none)                       the assistant prefix before the scored letter
  refusal.j2           conversation, response       the audit's "does the response decline?" (scored Yes/No)
  violation.j2         conversation, response,      the audit's compliance: "does the response violate the
                       question                     principle?" (scored Yes/No)

`principle` is a constitution Principle (fields: id, critique, revision, comparison, rationale, tags, weight).
`conversation` is a transcript string (see `transcript`). Every error a template can cause — an undefined
variable, a syntax error, an attempt to reach Python internals — is a one-line UserError naming the file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import (
    ChoiceLoader,
    FileSystemLoader,
    StrictUndefined,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from cai_pipeline.bundled import RESOURCES
from cai_pipeline.errors import UserError

PROMPTS_DIR = RESOURCES / "prompts"

# The assistant turn starts with this text and the judge scores the next token, "A" or "B". The same text
# lives in prompts/judge_prefix.j2 so a constitution can override it; this constant is the default.
JUDGE_PREFIX = "The answer is: ("

_JUDGE_VARIABLES = frozenset({"conversation", "question", "response_a", "response_b"})
TEMPLATE_VARIABLES: dict[str, frozenset[str]] = {
    "critique": frozenset({"principle", "check"}),
    "revision": frozenset({"principle", "check"}),
    "judge": _JUDGE_VARIABLES,
    "judge_reasoning": _JUDGE_VARIABLES,
    "judge_shared": _JUDGE_VARIABLES,
    "judge_shared_reasoning": _JUDGE_VARIABLES,
    "judge_prefix": frozenset(),
    "refusal": frozenset({"conversation", "response"}),
    "violation": frozenset({"conversation", "response", "question"}),
}
PRINCIPLE_ATTRIBUTES = frozenset({"id", "critique", "revision", "comparison", "rationale", "tags", "weight",
                                  "violation", "check"})
_SPEAKERS = {"user": "Human", "assistant": "Assistant", "system": "System"}


def _environment(folders: list[Path]) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=ChoiceLoader([FileSystemLoader(str(f)) for f in folders]),
        undefined=StrictUndefined,
        autoescape=False,  # prompts are plain text, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def _file_name(name: str) -> str:
    return name if name.endswith(".j2") else f"{name}.j2"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line an exception was raised at: jinja rewrites tracebacks to point into the .j2 file."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(".j2"):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class TemplateSet:
    """The templates one run renders: prompts/ plus an optional folder that overrides files by name."""

    def __init__(self, folder: str | Path | None = None, *, base: str | Path = PROMPTS_DIR) -> None:
        self.base = Path(base)
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None and not self.folder.is_dir():
            raise UserError(f"{self.folder}: template folder not found; fix the constitution's `templates` path")
        self.folders = [f for f in (self.folder, self.base) if f is not None]
        self.env = _environment(self.folders)

    @classmethod
    def for_constitution(cls, constitution: Any) -> TemplateSet:
        return cls(constitution.template_dir())

    def path_of(self, name: str) -> Path:
        """The file a template name resolves to (the extra folder first)."""
        file = _file_name(name)
        for folder in self.folders:
            if (folder / file).is_file():
                return folder / file
        known = ", ".join(sorted(n.removesuffix(".j2") for n in self.names()))
        raise UserError(f"template {file!r} not found in {', '.join(map(str, self.folders))}; known: {known}")

    def names(self) -> list[str]:
        return sorted({p.name for f in self.folders for p in f.glob("*.j2")})

    def render(self, name: str, **variables: Any) -> str:
        """Render a template by name ("critique" or "critique.j2"); every failure is a one-line UserError."""
        path = self.path_of(name)
        try:
            return self.env.get_template(path.name).render(**variables)
        except SecurityError as e:
            where = f"{path}:{_template_line(e.__traceback__) or 1}"
            reason = _one_line(str(e)).rstrip(".")
            raise UserError(f"{where}: refused: {reason}; templates may only use their variables") from None
        except UndefinedError as e:
            where = f"{path}:{_template_line(e.__traceback__) or 1}"
            allowed = ", ".join(sorted(TEMPLATE_VARIABLES.get(path.stem, variables))) or "none"
            raise UserError(f"{where}: {_one_line(e.message)}; this template gets: {allowed}") from None
        except TemplateSyntaxError as e:
            raise UserError(f"{e.filename or path}:{e.lineno}: template syntax error: {_one_line(e.message)}") from None
        except TemplateNotFound as e:
            raise UserError(f"{path}: includes template {e.name!r}, which is in none of the template folders") from None
        except TemplateError as e:
            where = f"{path}:{_template_line(e.__traceback__) or 1}"
            raise UserError(f"{where}: template error: {_one_line(str(e))}") from None

    def judge_prefix(self) -> str:
        return self.render("judge_prefix")

    def template_hashes(self) -> dict[str, str]:
        """sha256 of each template file as it will be used (an override replaces the project's file)."""
        return {n: hashlib.sha256(self.path_of(n).read_bytes()).hexdigest() for n in self.names()}


def render(name: str, **variables: Any) -> str:
    """Render one of the project's own templates (no extra folder)."""
    return TemplateSet().render(name, **variables)


def template_hashes(folder: str | Path | None = None) -> dict[str, str]:
    return TemplateSet(folder).template_hashes()


def transcript(messages: Iterable[Mapping[str, str]]) -> str:
    """Chat messages as the judge's `conversation` text: "Human: ...\\n\\nAssistant: ..."."""
    return "\n\n".join(f"{_SPEAKERS.get(m['role'], m['role'].title())}: {m['content'].strip()}" for m in messages)


# ---------------------------------------------------------------------------------------------------------
# Static checks of a template folder (used by `cai constitution validate`)


def _line_matching(source: str, pattern: str) -> int:
    for i, line in enumerate(source.splitlines(), 1):
        if re.search(pattern, line):
            return i
    return 1


def _principle_attributes(ast: nodes.Template) -> set[str]:
    return {
        n.attr
        for n in ast.find_all(nodes.Getattr)
        if isinstance(n.node, nodes.Name) and n.node.name == "principle"
    }


def check_template(path: Path) -> list[str]:
    """Problems in one template file as `file:line: field: message`: syntax errors, variables the template
    does not receive, and principle attributes that do not exist."""
    source = path.read_text(encoding="utf-8")
    try:
        ast = _environment([path.parent]).parse(source)
    except TemplateSyntaxError as e:
        return [f"{path}:{e.lineno}: (template): syntax error: {_one_line(e.message)}"]
    allowed = TEMPLATE_VARIABLES.get(path.stem, frozenset().union(*TEMPLATE_VARIABLES.values()))
    problems = []
    for v in sorted(meta.find_undeclared_variables(ast) - allowed):
        line = _line_matching(source, rf"\b{v}\b")
        gets = ", ".join(sorted(allowed)) or "none"
        problems.append(f"{path}:{line}: {v}: not a variable of {path.name}; it gets: {gets}")
    for a in sorted(_principle_attributes(ast) - PRINCIPLE_ATTRIBUTES):
        line = _line_matching(source, rf"principle\s*\.\s*{a}\b")
        fields = ", ".join(sorted(PRINCIPLE_ATTRIBUTES))
        problems.append(f"{path}:{line}: principle.{a}: principles have no field {a!r}; fields: {fields}")
    for a in sorted({n.attr for n in ast.find_all(nodes.Getattr) if n.attr.startswith("_")}):
        line = _line_matching(source, rf"\.\s*{re.escape(a)}\b")
        problems.append(f"{path}:{line}: {a}: underscore attributes are Python internals; the sandbox refuses them")
    return problems


def check_folder(folder: Path) -> list[str]:
    """Problems in every .j2 file of a constitution's template folder."""
    return [p for path in sorted(Path(folder).glob("*.j2")) for p in check_template(path)]
