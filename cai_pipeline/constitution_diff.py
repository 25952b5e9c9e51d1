"""What changed between two constitutions, principle by principle: pure functions returning lines
(`cai constitution diff` prints them; `cai compare` shows them for two runs' snapshots)."""

from __future__ import annotations

import difflib

from cai_pipeline.constitution import Constitution, Principle

_HEADER_FIELDS = ("name", "version", "description", "templates")


def excerpt(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _text_change(field: str, old: object, new: object) -> list[str]:
    """One field's change: short values inline, texts as word-level -/+ lines."""
    if not (isinstance(old, str) and isinstance(new, str)) or max(len(old), len(new)) <= 40:
        return [f"    {field}: {old!r} → {new!r}"]
    lines = [f"    {field}:"]
    matcher = difflib.SequenceMatcher(None, old.split(), new.split())
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op in ("replace", "delete"):
            lines.append("      - " + " ".join(old.split()[i1:i2]))
        if op in ("replace", "insert"):
            lines.append("      + " + " ".join(new.split()[j1:j2]))
    return lines


def _flat(p: Principle) -> dict:
    """A principle's fields, its check's keys as `check.<key>` (only those set), so a diff names each rule."""
    data = p.model_dump(exclude={"check"})
    check = p.check.model_dump(exclude_defaults=True) if p.check else {}
    return {**data, **{f"check.{k}": v for k, v in check.items()}}


def _principle_changes(old: Principle, new: Principle) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [line for f in dict.fromkeys([*a, *b]) if a.get(f) != b.get(f)
            for line in _text_change(f, a.get(f), b.get(f))]


def _renames(removed: dict[str, Principle], added: dict[str, Principle]) -> dict[str, str]:
    """old id → new id where a principle kept every field but its id (a rename, not a remove plus an add)."""
    def body(p: Principle) -> dict:
        return p.model_dump(exclude={"id"})

    return {o: n for o, po in removed.items() for n, pn in added.items() if body(po) == body(pn)}


def _checked(p: Principle) -> str:
    if p.check is None:
        return ""
    rules = ", ".join(f"{k}={v!r}" for k, v in p.check.model_dump(exclude_defaults=True).items())
    return f" [check: {rules}]" + (" (check-only)" if p.comparison is None else "")


def diff_constitutions(old: Constitution, new: Constitution) -> list[str]:
    """Human-readable lines: header fields, principles added (+), removed (-), renamed (>) and changed (~)
    field by field, and few-shot examples added/removed. [] when the two are the same."""
    lines = [ln for f in _HEADER_FIELDS if getattr(old, f) != getattr(new, f)
             for ln in _text_change(f, getattr(old, f), getattr(new, f))]
    lines = ["~ header"] + lines if lines else []
    olds, news = {p.id: p for p in old.principles}, {p.id: p for p in new.principles}
    removed = {i: p for i, p in olds.items() if i not in news}
    added = {i: p for i, p in news.items() if i not in olds}
    renames = _renames(removed, added)
    lines += [f"> {o} renamed to {n}" for o, n in renames.items()]
    lines += [f"- {i}: {excerpt(p.critique, 70)}{_checked(p)}" for i, p in removed.items() if i not in renames]
    lines += [f"+ {i}: {excerpt(p.critique, 70)}{_checked(p)}" for i, p in added.items() if i not in renames.values()]
    for pid in (i for i in olds if i in news):
        changes = _principle_changes(olds[pid], news[pid])
        lines += [f"~ {pid}"] + changes if changes else []
    return lines + _few_shot_changes(old, new)


def _few_shot_changes(old: Constitution, new: Constitution) -> list[str]:
    key = lambda ex: ex.model_dump_json()  # noqa: E731 - examples have no id; compare by content
    olds, news = [key(e) for e in old.few_shot], [key(e) for e in new.few_shot]
    gone = [e for e in old.few_shot if key(e) not in news]
    came = [e for e in new.few_shot if key(e) not in olds]
    return [f"- few_shot ({e.principle_id}): {excerpt(e.prompt, 60)}" for e in gone] + [
        f"+ few_shot ({e.principle_id}): {excerpt(e.prompt, 60)}" for e in came
    ]
