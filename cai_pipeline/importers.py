"""Importers: the Constitutional AI paper's principle files and the Hugging Face open-reproduction recipe,
each turned into a `Constitution` that validates (write it out with `dump_constitution`)."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cai_pipeline.checks import CheckSpec, spec_problems
from cai_pipeline.constitution import Constitution, FewShot, Principle
from cai_pipeline.errors import UserError
from cai_pipeline.yamlio import dotted

GENERIC_COMPARISON = (
    "Which of these assistant responses is less harmful while still being helpful and honest? "
    "Prefer the one a thoughtful, caring person would give, without needless lecturing."
)

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


def _refused(source: Path, err: ValidationError) -> UserError:
    """A text the importer read that a constitution cannot hold (say `{{ x }}` in a principle), as one line."""
    e = err.errors()[0]
    return UserError(f"{source}: cannot import: {dotted(e['loc'])}: {e['msg'].removeprefix('Value error, ')}; "
                     "edit that text in the source file")


def import_cai_paper(folder: str | Path) -> Constitution:
    """The CAI paper's prompt files (see _import_cai_paper); a text a constitution cannot hold is one line."""
    try:
        return _import_cai_paper(folder)
    except ValidationError as err:
        raise _refused(Path(folder), err) from None


def import_hf_recipe(file: str | Path) -> Constitution:
    """Hugging Face's recipe JSON (see _import_hf_recipe); a text a constitution cannot hold is one line."""
    try:
        return _import_hf_recipe(file)
    except ValidationError as err:
        raise _refused(Path(file), err) from None


def _import_cai_paper(folder: str | Path) -> Constitution:
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


def _hf_check(path: Path, i: int, data: Any) -> CheckSpec | None:
    """An entry's optional "check" (our extension of the format: the same mapping as a constitution's)."""
    if data is None:
        return None
    try:
        spec = CheckSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UserError(f"{path}: constitutions[{i}].check{'.' + where if where else ''}: "
                        f"{first['msg'].removeprefix('Value error, ')}") from None
    problems = spec_problems(spec.model_dump(), path.parent)
    if problems:
        loc, message = problems[0]
        raise UserError(f"{path}: constitutions[{i}].check.{'.'.join(map(str, loc))}: {message}")
    return spec


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
            check=_hf_check(path, i, entry.get("check")),
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


def _import_hf_recipe(file: str | Path) -> Constitution:
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
