"""Which prompts the audit asks: audit.prompts (a file, or a run folder whose audit's prompts to reuse), or by
default the run's held-out test prompts followed by the bundled audit set (harmful and benign prompts, tagged);
de-duplicated by prompt_id, then limited to audit.limit by a stratified draw that is the same in every run."""

from __future__ import annotations

from pathlib import Path

from cai_pipeline.errors import UserError
from cai_pipeline.rng import derive_seed
from cai_pipeline.store import RunLayout, read_parquet

BUNDLED_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "audit_prompts.jsonl"


def _run_prompts(folder: Path, key: str) -> list[dict]:
    """The prompts another run's audit used (its audit/responses.parquet), in order, with their tags: to audit a
    second pair of models on exactly the same prompts (`cai iterate`'s vs-base audits do). One row per response;
    audit_prompts keeps the first of each prompt_id."""
    responses = RunLayout(folder).audit_responses
    if not responses.exists():
        raise UserError(f"{key}: {folder} is a folder without an audit ({responses.relative_to(folder)}); give a "
                        "prompts file, or a run folder whose audit has run")
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "tag": r["tag"]} for r in read_parquet(responses)]


def file_prompts(path: str, key: str, system_prompt: str | None) -> tuple[list[dict], list[dict]]:
    from cai_pipeline.inputs import load_prompts

    file = Path(path).expanduser()
    if file.is_dir():
        return _run_prompts(file, key), []
    if not file.exists():
        raise UserError(f"{key}: {path} does not exist; point it at a JSONL, Parquet or CSV file of prompts")
    loaded = load_prompts(path, system_prompt=system_prompt, keep=("tag",))
    rows = [{**r, "tag": str(r["tag"]).strip().lower() if r["tag"] else "untagged"} for r in loaded.rows]
    return rows, [{**r, "stage": "audit"} for r in loaded.rejects]


def held_out_prompts(layout: RunLayout) -> list[dict]:
    """The prompts of the run's test split (preferences and SFT): prompts no training step saw."""
    rows = []
    for name, column in (("preferences", "prompt"), ("sft", "messages")):
        path = layout.split_file(name, "test")
        for r in read_parquet(path) if path.exists() else []:
            prompt = r[column] if column == "prompt" else r[column][:-1]  # sft: without the final revision
            rows.append({"prompt_id": r["prompt_id"], "prompt": prompt, "tag": "held_out"})
    return rows


def audit_prompts(cfg, layout: RunLayout) -> tuple[list[dict], list[dict]]:
    """({prompt_id, prompt, tag} rows, rejects): audit.prompts, or the held-out prompts and the bundled set;
    de-duplicated by prompt_id, then `limited` to audit.limit."""
    unique, rejects = candidate_prompts(cfg, layout)
    return apply_limit(unique, cfg.audit.limit), rejects


def apply_limit(rows: list[dict], limit: int | None) -> list[dict]:
    if limit is not None and limit < len(rows):
        chosen = limited(rows, limit)
        rows = [r for r in rows if r["prompt_id"] in chosen]
    return rows


def candidate_prompts(cfg, layout: RunLayout) -> tuple[list[dict], list[dict]]:
    """audit_prompts before audit.limit: every prompt the audit could ask."""
    a = cfg.audit
    if a.prompts:
        rows, rejects = file_prompts(a.prompts, "audit.prompts", cfg.prompts.system_prompt)
    else:
        bundled, rejects = file_prompts(str(BUNDLED_PROMPTS), "audit.prompts", cfg.prompts.system_prompt)
        rows = held_out_prompts(layout) + bundled
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["prompt_id"], r)  # a held-out prompt that is also in the bundled set stays held out
    return list(first.values()), rejects


def limited(rows: list[dict], limit: int) -> set[str]:
    """The prompt ids of a limited audit: held-out prompts first, then each other tag's share of the rest in
    proportion to its size (largest remainders), so 24 of the bundled set keep its harmful / benign mix. Within
    a tag, prompts go by hashed id: the same ones in every run, whatever the seed."""
    by_tag: dict[str, list[str]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], []).append(r["prompt_id"])
    for ids in by_tag.values():
        ids.sort(key=lambda pid: derive_seed(0, "audit", pid))
    held = by_tag.pop("held_out", [])[:limit]
    rest, total = limit - len(held), sum(len(ids) for ids in by_tag.values())
    exact = {tag: rest * len(ids) / total for tag, ids in by_tag.items()} if total else {}
    quota = {tag: int(x) for tag, x in exact.items()}
    for tag in sorted(exact, key=lambda t: quota[t] - exact[t])[: rest - sum(quota.values())]:
        quota[tag] += 1
    return set(held) | {pid for tag, ids in by_tag.items() for pid in ids[: quota[tag]]}
