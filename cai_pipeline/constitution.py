"""Constitutions: the Principle / FewShot / Constitution models, YAML loading with line-numbered validation,
and the seeded weighted draw of principles. Importers of other formats live in importers.py.

A constitution file is YAML (see docs/constitutions.md). Principle texts are *plain text*: the prompt templates
insert them as they are, so a principle cannot use template variables (a `{{ prompt }}` in a principle would
reach the model literally, which is why validation rejects template syntax there).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from cai_pipeline.bundled import resolve_resource
from cai_pipeline.checks import CheckResult, CheckSpec, run_check, spec_problems
from cai_pipeline.errors import UserError, one_line
from cai_pipeline.rng import race_order
from cai_pipeline.yamlio import dotted, line_of, parse, syntax_problem

# Variables a principle text may use: none (see the module docstring). Kept as a set so the check and the
# docs name one source of truth if we ever allow some.
PRINCIPLE_TEXT_VARIABLES: frozenset[str] = frozenset()
_TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# ---------------------------------------------------------------------------------------------------------
# Models


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty; write the text or remove the entry")
    return text


def _template_variables(text: str) -> list[str]:
    """Names used as `{{ name }}` / `{% ... name ... %}` in `text` (best effort on broken syntax)."""
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return sorted(meta.find_undeclared_variables(Environment().parse(text)))
    except TemplateSyntaxError:
        return re.findall(r"\{\{\s*([A-Za-z_]\w*)", text)


def _plain_text(text: str) -> str:
    if not _TEMPLATE_SYNTAX.search(text):
        return text
    unknown = [v for v in _template_variables(text) if v not in PRINCIPLE_TEXT_VARIABLES]
    what = f"template variable {unknown[0]!r}" if unknown else "template syntax ('{{', '{%' or '{#')"
    raise ValueError(
        f"uses {what}, but principle texts are plain text with no variables (the prompt templates insert "
        "them as they are); write the text out in full"
    )


def _valid_id(text: str) -> str:
    if not _ID.match(text):
        raise ValueError(
            f"{text!r} is not a valid id; use letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return text


def _number_as_text(value: Any) -> Any:
    # `version: 1` is a natural thing to write; keep it as the text "1" rather than reject it.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Text = Annotated[str, AfterValidator(_non_empty)]
PlainText = Annotated[str, AfterValidator(_non_empty), AfterValidator(_plain_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Principle(_Strict):
    id: Annotated[str, AfterValidator(_valid_id)]
    critique: PlainText = Field(description="asks for a critique of the assistant's last response")
    revision: PlainText = Field(description="asks for a rewrite of that response")
    comparison: PlainText | None = Field(None, description="the judge's question when comparing two responses; "
                                         "may be left out when the principle has a check (check-only)")
    rationale: Text = Field(description="why the principle exists; shown to people, not to the model")
    tags: list[Text] = []
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, strict=True, description="relative draw weight")
    violation: PlainText | None = Field(None, description="a yes/no question, Yes meaning the response violates "
                                        "the principle (the audit's compliance); default: one derived from critique")
    check: CheckSpec | None = Field(None, description="rules a program decides (checks.py); all must pass")
    _base_dir: Path | None = PrivateAttr(None)  # where a check's python module is looked up: the file's folder

    @model_validator(mode="after")
    def _judged_or_checked(self) -> Principle:
        if self.comparison is None and self.check is None:
            raise ValueError("comparison: required unless the principle has a check; add the judge's question")
        return self

    def run_check(self, conversation, response: str) -> CheckResult | None:
        """The check's verdict on `response`; None for a principle without a check."""
        return None if self.check is None else run_check(self.check, conversation, response, self._base_dir)


class FewShot(_Strict):
    prompt: Text
    response: Text
    critique: Text
    revision: Text
    principle_id: str


class Constitution(_Strict):
    name: Text
    version: Annotated[Text, BeforeValidator(_number_as_text)]
    description: str = ""
    templates: Text | None = Field(None, description="folder of .j2 templates, relative to this file")
    principles: list[Principle] = Field(min_length=1)
    few_shot: list[FewShot] = []
    _source: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _cross_references(self) -> Constitution:
        problems = cross_reference_problems(self.model_dump())
        if problems:
            loc, message = problems[0]
            raise ValueError(f"{dotted(loc)}: {message}")
        return self

    def __eq__(self, other: object) -> bool:
        # Content equality: the same constitution loaded from two places is the same constitution.
        return isinstance(other, Constitution) and self.model_dump() == other.model_dump()

    __hash__ = None  # mutable model; equality is by content

    def judged(self) -> list[Principle]:
        """The principles the LLM judge can be asked (those with a comparison question), for the tools that
        measure the judge itself; a UserError when every principle is check-only."""
        out = [p for p in self.principles if p.comparison is not None]
        if not out:
            raise UserError(f"constitution {self.name}: every principle is check-only (no comparison question), "
                            "so there is nothing to ask a judge; add a comparison to one")
        return out

    def template_dir(self) -> Path | None:
        """The constitution's own template folder, resolved against the file it was loaded from."""
        if self.templates is None:
            return None
        base = self._source.parent if self._source else Path.cwd()
        return (base / self.templates).resolve()


def cross_reference_problems(data: Any) -> list[tuple[tuple, str]]:
    """Duplicate principle ids and few-shot examples naming a missing principle, as (location, message).

    Works on raw YAML data too (items may be malformed), so `validate_file` reports these even when other
    fields are broken."""
    if not isinstance(data, dict):
        return []
    principles = data.get("principles") if isinstance(data.get("principles"), list) else []
    few_shot = data.get("few_shot") if isinstance(data.get("few_shot"), list) else []
    problems: list[tuple[tuple, str]] = []
    first: dict[str, int] = {}
    for i, p in enumerate(principles):
        pid = p.get("id") if isinstance(p, dict) else None
        if not isinstance(pid, str):
            continue
        if pid in first:
            problems.append(
                (("principles", i, "id"), f"duplicate id {pid!r} (also principles[{first[pid]}]); make ids unique")
            )
        else:
            first[pid] = i
    for j, ex in enumerate(few_shot):
        ref = ex.get("principle_id") if isinstance(ex, dict) else None
        if isinstance(ref, str) and ref not in first:
            near = difflib.get_close_matches(ref, list(first), n=1)
            hint = f"did you mean {near[0]!r}?" if near else "use the id of one of the principles"
            problems.append((("few_shot", j, "principle_id"), f"no principle has id {ref!r}; {hint}"))
    return problems


# ---------------------------------------------------------------------------------------------------------
# Loading and validation


def _known_keys(loc: tuple) -> list[str]:
    parent = [p for p in loc[:-1] if isinstance(p, str)]
    model = {"principles": Principle, "few_shot": FewShot, "check": CheckSpec}.get(parent[-1] if parent else "",
                                                                                Constitution)
    return list(model.model_fields)


def _pydantic_problems(data: Any) -> list[tuple[tuple, str]]:
    try:
        Constitution.model_validate(data)
        return []
    except ValidationError as err:
        errors = err.errors()
    problems = []
    for e in errors:
        loc = tuple(e["loc"])
        if not loc:  # the cross-reference validator; cross_reference_problems reports those with locations
            continue
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1, cutoff=0.6)
            msg = f"unknown key; did you mean {near[0]!r}?" if near else f"unknown key; allowed: {', '.join(_known_keys(loc))}"
        elif e["type"] == "missing":
            msg = "required; add it"
        elif loc[-1] == "weight" and e["type"] == "greater_than":
            msg = f"must be > 0 (got {e.get('input')!r}); weights are relative draw weights, 1 is the default"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] in ("float_type", "string_type", "list_type", "dict_type", "model_type"):
                msg += f" (got {e.get('input')!r})"
        problems.append((loc, msg))
    return problems


def _read(path: Path, shown: str) -> tuple[yaml.Node | None, Any, list[tuple], list[str]]:
    """(node, data, repeated keys, problems that stop reading)."""
    if path.is_dir():
        return None, None, [], [f"{shown}: is a folder; name a constitution YAML file"]
    if not path.is_file():
        return None, None, [], [f"{shown}: file not found; check the path"]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return None, None, [], [f"{shown}:1: (file): not UTF-8 text (byte {e.start}); save it as UTF-8"]
    try:
        node, data, repeated = parse(text)
    except yaml.YAMLError as e:
        line, problem = syntax_problem(e)
        return None, None, [], [f"{shown}:{line}: (yaml): syntax error: {problem}"]
    return node, data, repeated, []


def _template_folder_problems(data: dict, path: Path) -> tuple[list[tuple], list[str]]:
    """A missing folder is a problem in this file; problems inside its templates are in those files."""
    folder = data.get("templates")
    if not isinstance(folder, str) or not folder.strip():
        return [], []
    resolved = path.parent / folder
    if not resolved.is_dir():
        return [(("templates",), f"folder {folder!r} not found next to this file ({resolved}); fix the path")], []
    from cai_pipeline.templates import check_folder

    return [], check_folder(resolved)


def _check(path: str | Path) -> tuple[Any, list[str]]:
    shown = str(path)
    resolved = resolve_resource(shown)
    node, data, repeated, problems = _read(resolved, shown)
    if problems:
        return None, problems
    if not isinstance(data, dict):
        return None, [f"{shown}:1: (top level): expected a mapping with name, version, principles; see docs/constitutions.md"]
    folder_problems, template_problems = _template_folder_problems(data, resolved)
    located = _pydantic_problems(data) + cross_reference_problems(data) + folder_problems
    located += check_problems(data, resolved.parent)
    lines = [(line_of(node, loc), loc, msg) for loc, msg in located] + repeated
    lines.sort(key=lambda t: t[0])
    return data, [f"{shown}:{line}: {dotted(loc)}: {msg}" for line, loc, msg in lines] + template_problems


def check_problems(data: dict, base_dir: Path) -> list[tuple[tuple, str]]:
    """Regexes that do not compile and check functions that do not import, located in the file."""
    principles = data.get("principles") if isinstance(data.get("principles"), list) else []
    return [(("principles", i, "check", *loc), message) for i, p in enumerate(principles) if isinstance(p, dict)
            for loc, message in spec_problems(p.get("check"), base_dir)]


def validate_file(path: str | Path) -> list[str]:
    """Every problem in a constitution file, each one line `file:line: field: message`; [] when it is valid."""
    return [one_line(p) for p in _check(path)[1]]


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate a constitution file (relative to the working directory, else to the project).

    Raises UserError with the first problem on one line (`cai constitution validate` lists them all)."""
    data, problems = _check(path)
    if problems:
        more = f" (and {len(problems) - 1} more; run `cai constitution validate {path}`)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    constitution = Constitution.model_validate(data)
    constitution._source = resolve_resource(str(path)).resolve()
    for p in constitution.principles:
        p._base_dir = constitution._source.parent
    return constitution


def constitution_sha256(c: Constitution) -> str:
    """Hash of the content (not the file's bytes): comments, key order and formatting do not change it."""
    text = json.dumps(c.model_dump(mode="json"), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    # Multi-line texts as literal blocks, so a file stays readable and diffs line by line.
    style = "|" if "\n" in text.strip("\n") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_constitution(c: Constitution, path: str | Path) -> Path:
    """Write `c` as a constitution YAML file that `load_constitution` reads back to an equal model."""
    data = c.model_dump(mode="json", exclude_none=True)
    header = f"# {c.name} (version {c.version}). Check edits with: cai constitution validate {Path(path).name}\n"
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    from cai_pipeline.store import atomic_write_text

    out = Path(path)
    atomic_write_text(out, header + body)  # a crash leaves the old file or the new one, never half of one
    return out


# ---------------------------------------------------------------------------------------------------------
# The seeded draw


def draw_principles(
    principles: Sequence[Principle], seed: int, keys: tuple, k: int, *, exclude: Iterable[str] = ()
) -> list[Principle]:
    """Draw k distinct principles for the row and step named by `keys` (e.g. ("revise", prompt_id,
    sample_idx, round)), each weighted by `weight`: the k largest race keys (rng.race_key), which is a weighted
    draw without replacement.

    Principles whose id is in `exclude` (already used in this row) are skipped while unused ones remain; once
    every principle is used, the rest of the k come from the full set (minus those already picked). Returns
    min(k, len(principles)) principles: a one-principle constitution always gives that one. A principle's key
    depends on (seed, keys, its id, its weight) only, so editing a principle's text moves no draw, and adding a
    principle changes only the draws where its key wins (docs/reuse.md)."""
    if k < 0:
        raise ValueError(f"k must be ≥ 0, got {k}")
    excluded = set(exclude)
    by_id = {p.id: p for p in principles}
    order = race_order(seed, keys, [(p.id, p.weight) for p in principles])
    ranked = [i for i in order if i not in excluded] + [i for i in order if i in excluded]
    return [by_id[i] for i in ranked[: min(k, len(principles))]]
