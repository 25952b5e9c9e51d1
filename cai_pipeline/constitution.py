"""Constitutions: the Principle / FewShot / Constitution models, YAML loading with line-numbered validation,
the seeded weighted draw of principles, and importers for the CAI paper's files and the Hugging Face recipe.

A constitution file is YAML (see docs/constitutions.md). Principle texts are *plain text*: the prompt templates
insert them as they are, so a principle cannot use template variables (a `{{ prompt }}` in a principle would
reach the model literally, which is why validation rejects template syntax there).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
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

from cai_pipeline.config import resolve_resource
from cai_pipeline.errors import UserError

# Variables a principle text may use: none (see the module docstring). Kept as a set so the check and the
# docs name one source of truth if we ever allow some.
PRINCIPLE_TEXT_VARIABLES: frozenset[str] = frozenset()
_TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

GENERIC_COMPARISON = (
    "Which of these assistant responses is less harmful while still being helpful and honest? "
    "Prefer the one a thoughtful, caring person would give, without needless lecturing."
)


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
    comparison: PlainText = Field(description="the judge's question when comparing two responses")
    rationale: Text = Field(description="why the principle exists; shown to people, not to the model")
    tags: list[Text] = []
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, strict=True, description="relative draw weight")


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
            raise ValueError(f"{_field(loc)}: {message}")
        return self

    def __eq__(self, other: object) -> bool:
        # Content equality: the same constitution loaded from two places is the same constitution.
        return isinstance(other, Constitution) and self.model_dump() == other.model_dump()

    __hash__ = None  # mutable model; equality is by content

    def principle(self, principle_id: str) -> Principle:
        for p in self.principles:
            if p.id == principle_id:
                return p
        raise KeyError(f"{self.name}: no principle {principle_id!r}")

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


def _field(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (for line numbers) and the data it constructs, from one parse."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _line_of(root: yaml.Node | None, loc: Sequence[Any]) -> int:
    """1-based line of the deepest node along `loc` that exists (the key's line for mapping entries)."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _duplicate_keys(node: yaml.Node | None, loc: tuple = ()) -> list[tuple[int, tuple, str]]:
    """(line, location, message) for each repeated key. PyYAML silently keeps the last of two equal keys, and
    an edited file often has exactly that mistake."""
    problems: list[tuple[int, tuple, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if k.value in seen:
                msg = "appears twice in this mapping (the last one wins); remove one"
                problems.append((k.start_mark.line + 1, loc + (k.value,), msg))
            seen.add(k.value)
            problems += _duplicate_keys(v, loc + (k.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, loc + (i,))
    return problems


def _known_keys(loc: tuple) -> list[str]:
    parent = [p for p in loc[:-1] if isinstance(p, str)]
    model = {"principles": Principle, "few_shot": FewShot}.get(parent[0] if parent else "", Constitution)
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


def _read(path: Path, shown: str) -> tuple[yaml.Node | None, Any, list[str]]:
    if not path.is_file():
        return None, None, [f"{shown}: file not found; check the path"]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return None, None, [f"{shown}:1: (file): not UTF-8 text (byte {e.start}); save it as UTF-8"]
    try:
        node, data = _parse(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        return None, None, [f"{shown}:{mark.line + 1 if mark else 1}: (yaml): syntax error: {problem}"]
    return node, data, []


def _template_folder_problems(data: dict, path: Path, node: yaml.Node) -> tuple[list[tuple], list[str]]:
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
    node, data, problems = _read(resolved, shown)
    if problems:
        return None, problems
    if not isinstance(data, dict):
        return None, [f"{shown}:1: (top level): expected a mapping with name, version, principles; see docs/constitutions.md"]
    folder_problems, template_problems = _template_folder_problems(data, resolved, node)
    located = _pydantic_problems(data) + cross_reference_problems(data) + folder_problems
    lines = [(_line_of(node, loc), loc, msg) for loc, msg in located] + _duplicate_keys(node)
    lines.sort(key=lambda t: t[0])
    return data, [f"{shown}:{line}: {_field(loc)}: {msg}" for line, loc, msg in lines] + template_problems


def validate_file(path: str | Path) -> list[str]:
    """Every problem in a constitution file, each one line `file:line: field: message`; [] when it is valid."""
    return _check(path)[1]


def load_constitution(path: str | Path) -> Constitution:
    """Load and validate a constitution file (relative to the working directory, else to the project).

    Raises UserError with the first problem on one line (`cai constitution validate` lists them all)."""
    data, problems = _check(path)
    if problems:
        more = f" (and {len(problems) - 1} more; run `cai constitution validate {path}`)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    constitution = Constitution.model_validate(data)
    constitution._source = resolve_resource(str(path)).resolve()
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
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + body, encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------------------
# The seeded draw


def draw_principles(
    principles: Sequence[Principle], rng: random.Random, k: int, *, exclude: Iterable[str] = ()
) -> list[Principle]:
    """Draw k distinct principles, each pick weighted by `weight`, using only `rng`.

    Principles whose id is in `exclude` (already used in this row) are skipped while unused ones remain; once
    every principle is used, the draw falls back to the full set (minus those picked in this call). Returns
    min(k, len(principles)) principles: a one-principle constitution always gives that one. Each pick
    consumes exactly one `rng.random()`, so the sequence depends only on the rng's seed and the inputs."""
    if k < 0:
        raise ValueError(f"k must be ≥ 0, got {k}")
    excluded = set(exclude)
    picked: list[Principle] = []
    for _ in range(min(k, len(principles))):
        remaining = [p for p in principles if not any(p is q for q in picked)]
        fresh = [p for p in remaining if p.id not in excluded]
        picked.append(_weighted_pick(fresh or remaining, rng))
    return picked


def _weighted_pick(candidates: Sequence[Principle], rng: random.Random) -> Principle:
    total = sum(p.weight for p in candidates)
    point = rng.random() * total
    for p in candidates:
        point -= p.weight
        if point < 0:
            return p
    return candidates[-1]  # float rounding can leave point at ~0 after the last subtraction


# ---------------------------------------------------------------------------------------------------------
# Importers


def _strip_request(text: str, label: str, answer: str) -> str:
    """'\\n\\nCritiqueRequest: Do X.\\n\\nCritique:' → 'Do X.' (the paper's transcript scaffolding removed)."""
    text = text.strip()
    text = re.sub(rf"^{label}:\s*", "", text)
    text = re.sub(rf"\s*{answer}:\s*$", "", text)
    return text.strip()


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"{path}: file not found; check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); is this the right file?") from None


def _paper_requests(path: Path) -> list[tuple[str, str, str]]:
    """(id, critique, revision) from CritiqueRevisionInstructions.json."""
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: expected an object of principles like {{\"harmful0\": {{\"prompt\": [...], ...}}}}")
    out = []
    for key, entry in data.items():
        prompts = entry.get("prompt") if isinstance(entry, dict) else None
        edit = entry.get("edit_request") if isinstance(entry, dict) else None
        if not (isinstance(prompts, list) and prompts and isinstance(prompts[0], str) and isinstance(edit, str)):
            raise UserError(f"{path}: {key}: expected {{\"prompt\": [\"...\"], \"edit_request\": \"...\"}}")
        critique = _strip_request(prompts[0], "CritiqueRequest", "Critique")
        revision = _strip_request(edit, "RevisionRequest", "Revision")
        if not critique or not revision:
            raise UserError(f"{path}: {key}: empty critique or revision request")
        out.append((re.sub(r"[^A-Za-z0-9_.-]", "_", key), critique, revision))
    return out


def _paper_comparisons(path: Path) -> list[str]:
    if not path.is_file():
        return []
    data = _read_json(path)
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise UserError(f"{path}: expected a JSON list of strings (the feedback principles)")
    return [re.sub(r"\s*Options:\s*$", "", x.strip()).strip() for x in data]


_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")


def _paper_transcript(text: str) -> dict[str, str] | None:
    """One few-shot transcript → {prompt, response, critique_request, critique, revision}; None if malformed.

    Our few-shot format is single-turn, so the prompt is the human's last turn before the critiqued response."""
    parts = _TURN.split("\n\n" + text.lstrip("\n"))
    turns = [(label, body.strip()) for label, body in zip(parts[1::2], parts[2::2], strict=True)]
    labels = [label for label, _ in turns]
    if "CritiqueRequest" not in labels:
        return None
    c = labels.index("CritiqueRequest")
    after = dict(turns[c:])
    humans = [i for i in range(c) if labels[i] == "Human"]
    if not humans or labels[c - 1] != "Assistant" or not all(after.get(x) for x in ("Critique", "Revision")):
        return None
    return {
        "prompt": turns[humans[-1]][1],
        "response": turns[c - 1][1],
        "critique_request": after["CritiqueRequest"],
        "critique": after["Critique"],
        "revision": after["Revision"],
    }


def _closest_principle(request: str, principles: Sequence[Principle], cutoff: float = 0.6) -> str | None:
    """Id of the principle whose critique request this example was written for. Examples paraphrase their
    principle's request ("your previous response" for "the assistant's last response"), so match by similarity;
    below `cutoff` the example was written for some other request and matches none."""
    scored = [(difflib.SequenceMatcher(None, request, p.critique).ratio(), p.id) for p in principles]
    best = max(scored, default=(0.0, None))
    return best[1] if best[0] >= cutoff else None


def _few_shot_from(examples: list[dict[str, str]], principles: list[Principle]) -> tuple[list[FewShot], int]:
    """Few-shot examples matched to principles; examples whose request matches none are skipped (counted)."""
    kept, skipped = [], 0
    for ex in examples:
        pid = _closest_principle(ex["critique_request"], principles)
        if pid is None:
            skipped += 1
            continue
        fields = {k: v for k, v in ex.items() if k != "critique_request"}
        kept.append(FewShot(principle_id=pid, **fields))
    return kept, skipped


def _paper_principles(requests: list[tuple[str, str, str]], comparisons: list[str]) -> list[Principle]:
    principles = []
    for i, (pid, critique, revision) in enumerate(requests):
        source = f"Imported from the Constitutional AI paper (Bai et al. 2022, arXiv 2212.08073), principle {pid}."
        if i < len(comparisons):
            comparison = comparisons[i]
            why = (f" Its comparison question is the paper's feedback principle #{i + 1}, paired by position "
                   "(the paper keeps the two lists separate).")
        else:
            comparison = GENERIC_COMPARISON
            why = " The paper gives no comparison question for it, so the generic harmlessness question is used."
        principles.append(Principle(id=pid, critique=critique, revision=revision, comparison=comparison,
                                    rationale=source + why, tags=["cai-paper"]))
    return principles


def import_cai_paper(folder: str | Path) -> Constitution:
    """The paper's prompt files (anthropics/ConstitutionalHarmlessnessPaper `prompts/`) as a Constitution.

    Needs CritiqueRevisionInstructions.json; uses RLMadisonInstructions.json (comparison questions) and
    CritiqueRevisionFewShotPrompts.json (few-shot examples) when present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder; give the folder holding CritiqueRevisionInstructions.json")
    requests = _paper_requests(folder / "CritiqueRevisionInstructions.json")
    comparisons = _paper_comparisons(folder / "RLMadisonInstructions.json")
    principles = _paper_principles(requests, comparisons)
    few_path = folder / "CritiqueRevisionFewShotPrompts.json"
    raw = _read_json(few_path) if few_path.is_file() else []
    if not isinstance(raw, list):
        raise UserError(f"{few_path}: expected a JSON list of transcript strings")
    parsed = [t for t in (_paper_transcript(x) for x in raw if isinstance(x, str)) if t]
    few_shot, skipped = _few_shot_from(parsed, principles)
    notes = _import_notes(len(raw) - len(parsed), skipped, max(0, len(comparisons) - len(requests)))
    return Constitution(
        name="cai-paper",
        version="1",
        description="The critique/revision principles of the Constitutional AI paper (Bai et al. 2022), "
        f"imported by `cai constitution import --format cai-paper`.{notes}",
        principles=principles,
        few_shot=few_shot,
    )


def _import_notes(malformed: int, unmatched: int, extra_comparisons: int) -> str:
    notes = []
    if malformed:
        notes.append(f"{malformed} few-shot transcript(s) could not be parsed and were skipped")
    if unmatched:
        notes.append(f"{unmatched} few-shot example(s) were written for a critique request that is not one of "
                     "the principles (e.g. the paper's truthfulness example) and were skipped")
    if extra_comparisons:
        notes.append(f"{extra_comparisons} comparison question(s) beyond the number of principles were not used")
    return "".join(f" Note: {n}." for n in notes)


def _hf_principles(path: Path, entries: Any) -> list[Principle]:
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: constitutions: expected a non-empty list of {{\"critic\": ..., \"revision\": ...}}")
    principles = []
    for i, entry in enumerate(entries):
        critic = entry.get("critic") if isinstance(entry, dict) else None
        revision = entry.get("revision") if isinstance(entry, dict) else None
        if not (isinstance(critic, str) and critic.strip() and isinstance(revision, str) and revision.strip()):
            raise UserError(f"{path}: constitutions[{i}]: needs non-empty \"critic\" and \"revision\" strings")
        principles.append(Principle(
            id=f"hf{i}",
            critique=_strip_request(critic, "CritiqueRequest", "Critique"),
            revision=_strip_request(revision, "RevisionRequest", "Revision"),
            comparison=GENERIC_COMPARISON,
            rationale=f"Imported from {path.name} (Hugging Face constitutional-AI recipe), constitutions[{i}]. "
            "The recipe has no comparison questions, so the generic harmlessness question is used.",
            tags=["hf-recipe"],
        ))
    return principles


def _hf_chat(chat: Any) -> dict[str, str] | None:
    """user/assistant turns ending prompt, response, critique request, critique, revision request, revision."""
    if not isinstance(chat, list) or len(chat) < 6:
        return None
    last = chat[-6:]
    roles = ["user", "assistant"] * 3
    if not all(isinstance(m, dict) and m.get("role") == r and isinstance(m.get("content"), str)
               for m, r in zip(last, roles, strict=True)):
        return None
    texts = [m["content"].strip() for m in last]
    if not all(texts):
        return None
    return {"prompt": texts[0], "response": texts[1], "critique_request": texts[2],
            "critique": texts[3], "revision": texts[5]}


def import_hf_recipe(file: str | Path) -> Constitution:
    """Hugging Face's open CAI recipe JSON: {"constitutions": [{"critic", "revision"}], "system_chat": [...]}."""
    path = Path(file)
    data = _read_json(path)
    if not isinstance(data, dict) or "constitutions" not in data:
        raise UserError(f"{path}: expected an object with \"constitutions\" (and optionally \"system_chat\")")
    principles = _hf_principles(path, data["constitutions"])
    chats = data.get("system_chat") or []
    if not isinstance(chats, list):
        raise UserError(f"{path}: system_chat: expected a list of chats (lists of {{role, content}} turns)")
    parsed = [x for x in (_hf_chat(c) for c in chats) if x]
    for ex in parsed:
        ex["critique_request"] = _strip_request(ex["critique_request"], "CritiqueRequest", "Critique")
    few_shot, skipped = _few_shot_from(parsed, principles)
    return Constitution(
        name=re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem) or "hf-recipe",
        version="1",
        description=f"Imported from {path.name} (Hugging Face constitutional-AI recipe format) by "
        f"`cai constitution import --format hf-recipe`.{_import_notes(len(chats) - len(parsed), skipped, 0)}",
        principles=principles,
        few_shot=few_shot,
    )
