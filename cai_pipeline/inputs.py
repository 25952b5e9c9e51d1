"""Prompt files in: JSONL (optionally .gz), Parquet, CSV, and Anthropic's hh-rlhf transcripts.

A row gives `prompt` (a string) or `messages` (a list of {role, content}); hh-rlhf rows give `chosen`, a
"\\n\\nHuman: …\\n\\nAssistant: …" transcript whose first Human turn is the prompt. A structurally broken file
is a `UserError` naming the file and line; an unusable row (empty prompt, duplicate) is a reject with its reason.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from cai_pipeline.errors import UserError
from cai_pipeline.records import is_utf8, make_reject
from cai_pipeline.rng import stable_id

BUNDLED_PROMPTS = Path(__file__).parent / "data" / "prompts.jsonl"
_ROLES = {"system", "user", "assistant"}


@dataclass
class LoadedPrompts:
    rows: list[dict]  # PromptRecord dicts, in file order
    rejects: list[dict] = field(default_factory=list)  # RejectRecord dicts (stage "prompts")
    source: str = ""


def prompt_id(messages: list[dict]) -> str:
    """Stable hash of the prompt messages: the same prompt gets the same id in every run and file."""
    return stable_id(json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False))


def hh_first_human_turn(transcript: str) -> str:
    """The first Human turn of an hh-rlhf transcript ("\\n\\nHuman: …\\n\\nAssistant: …")."""
    m = re.search(r"Human:(.*?)(?:\n\nAssistant:|\Z)", transcript, flags=re.S)
    return m.group(1).strip() if m else ""


def hh_split(transcript: str) -> tuple[list[dict], str]:
    """(prompt messages, final assistant reply) of an hh-rlhf transcript: everything up to the last Assistant turn."""
    parts = re.split(r"\n\n(Human|Assistant):", "\n\n" + transcript.lstrip("\n"))
    turns = [{"role": "user" if parts[i] == "Human" else "assistant", "content": parts[i + 1].strip()}
             for i in range(1, len(parts) - 1, 2)]
    if not turns or turns[-1]["role"] != "assistant":
        return turns, ""
    return turns[:-1], turns[-1]["content"]


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # EOFError: a truncated download
            why = "it ends early: truncated" if isinstance(e, EOFError) else str(e)
            raise UserError(f"{path}: not a valid gzip file ({why}); download it again, or decompress it and fix "
                            "the name") from None
    try:
        return raw.decode("utf-8-sig")  # Excel's "CSV UTF-8" and many JSONL writers start with a BOM
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {e.start}); re-save it as UTF-8") from None


def _jsonl_rows(path: Path) -> list[tuple[int, dict]]:
    rows = []
    # split on \n only: str.splitlines() would also split inside a prompt holding U+2028, U+0085 or \x1c
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object with a 'prompt' or 'messages' field")
        rows.append((lineno, obj))
    return rows


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(_read_text(path)))
    return [(i + 2, dict(r)) for i, r in enumerate(reader)]


def _parquet_rows(path: Path) -> list[tuple[int, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: cannot read as Parquet ({str(e).splitlines()[0]})") from None
    return [(i + 1, r) for i, r in enumerate(table.to_pylist())]


def _given(obj: dict, key: str) -> bool:
    return obj.get(key) not in (None, "")  # CSV gives "" for an empty cell


def _messages(where: str, obj: dict) -> list[dict]:
    """The prompt messages of one row, or a UserError naming the row."""
    if "messages" in obj and obj["messages"] is not None:
        msgs = obj["messages"]
        if isinstance(msgs, str):  # CSV carries messages as a JSON string
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError:
                raise UserError(f"{where}: 'messages' is not a JSON list of {{role, content}}") from None
        ok = isinstance(msgs, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
        if not ok:
            raise UserError(f"{where}: 'messages' must be a list of {{role: system|user|assistant, content: str}}")
        for i, m in enumerate(msgs):
            if m.get("role") not in _ROLES:
                raise UserError(f"{where}: 'messages' must be a list of turns whose role is system, user or "
                                f"assistant (lower case); messages[{i}].role is {m.get('role')!r}")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "prompt" in obj and obj["prompt"] is not None:
        if not isinstance(obj["prompt"], str):
            raise UserError(f"{where}: 'prompt' must be a string (use 'messages' for a conversation)")
        return [{"role": "user", "content": obj["prompt"]}]
    if isinstance(obj.get("chosen"), str):
        return [{"role": "user", "content": hh_first_human_turn(obj["chosen"])}]
    raise UserError(f"{where}: row has neither 'prompt' nor 'messages' (nor hh-rlhf 'chosen'); add one of them")


def turn_problem(messages: list[dict]) -> tuple[str, str] | None:
    """(reason, detail) when a prompt is not one the pipeline can answer: an optional system turn, then user
    and assistant alternating from the user, ending with the user's turn (the one to answer)."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[:1] == ["system"] else roles
    if body and body[-1] == "assistant":
        return "ends_with_assistant", ("the conversation ends with an assistant turn, so there is nothing to "
                                       "answer; drop that turn (or end with the user's question)")
    if not body or body != [("user", "assistant")[i % 2] for i in range(len(body))]:
        return "bad_turn_order", (f"roles {roles}: after an optional first system turn, user and assistant must "
                                  "alternate, starting and ending with user")
    return None


def read_rows(path: Path, fmt: str) -> list[tuple[int, dict]]:
    """(line or row number, row) for every row of a JSONL/Parquet/CSV file, by `fmt` or the file name."""
    name = path.name.lower()
    if fmt == "parquet" or (fmt == "auto" and name.endswith(".parquet")):
        return _parquet_rows(path)
    if fmt == "csv" or (fmt == "auto" and name.endswith(".csv")):
        return _csv_rows(path)
    if fmt in ("jsonl", "hh-rlhf") or name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        return _jsonl_rows(path)
    raise UserError(f"{path}: unknown prompt file type; use .jsonl, .jsonl.gz, .parquet or .csv, or set prompts.format")


def _duplicate(pid: str, given, first) -> str:
    if given is not None and first is not None and type(given) is not type(first):
        return f"prompt_id {given!r} is the same id as {first!r} seen before, after conversion to text"
    return f"prompt_id {pid} seen before"


def in_part(pid: str, part: int | None, parts: int) -> bool:
    """Whether a prompt belongs to part `part` of `parts`: by its hashed id, so the parts are disjoint, cover
    every prompt, and do not move when the file is reordered."""
    return part is None or int(stable_id("part", pid), 16) % parts == part


def drop_near_duplicates(rows: list[dict], rejects: list[dict], threshold: float, n: int) -> list[dict]:
    """The rows that are not near-duplicates (word n-gram Jaccard ≥ threshold, ngrams.py) of an earlier kept
    row; each dropped one becomes a reject naming the prompt it duplicates."""
    from cai_pipeline.ngrams import near_duplicates, prompt_text

    dupes = near_duplicates([prompt_text(r["prompt"]) for r in rows], threshold, n)
    for i, j in sorted(dupes.items()):
        rejects.append(make_reject("prompts", rows[i]["prompt_id"], "near_duplicate",
                                   f"a near-duplicate (word {n}-gram Jaccard ≥ {threshold}) of prompt "
                                   f"{rows[j]['prompt_id']}: {prompt_text(rows[j]['prompt'])[:120]!r}", rows[i]))
    return [r for i, r in enumerate(rows) if i not in dupes]


def load_prompts(path: str | None, *, fmt: str = "auto", limit: int | None = None,
                 system_prompt: str | None = None, part: int | None = None, parts: int = 1,
                 keep: tuple[str, ...] = (), near: float | None = None, near_n: int = 3) -> LoadedPrompts:
    """Read, validate, de-duplicate by prompt_id, drop near-duplicates (with `near`, a Jaccard threshold),
    apply `limit` (to kept prompts, in file order), then keep part `part` of `parts`. `keep`: extra columns to
    carry into each row as they are (None where a row lacks one), e.g. the audit's `tag`."""
    file = Path(path).expanduser() if path else BUNDLED_PROMPTS
    if not file.exists():
        raise UserError(f"prompts.path: {file} does not exist; point it at a JSONL, Parquet or CSV file")
    if file.is_dir():
        raise UserError(f"prompts.path: {file} is a folder; point it at a JSONL, Parquet or CSV file")
    rows = read_rows(file, fmt)
    if not rows:
        raise UserError(f"{file}: no prompts in the file; add rows with a 'prompt' or 'messages' field")
    out = LoadedPrompts(rows=[], source=str(file))
    seen: dict[str, object] = {}  # prompt_id → the id as the file gave it
    for lineno, obj in rows:
        if limit is not None and near is None and len(out.rows) >= limit:
            break  # (near-duplicates are judged on the whole file, then limited)
        if _given(obj, "prompt") and _given(obj, "messages"):
            out.rejects.append(make_reject("prompts", str(obj.get("prompt_id") or f"line {lineno}"), "prompt_and_messages",
                                           f"line {lineno}: the row has both 'prompt' and 'messages'; keep one", obj))
            continue
        messages = _messages(f"{file}:{lineno}", obj)
        if system_prompt and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": system_prompt}, *messages]
        given = obj.get("prompt_id")
        if not all(is_utf8(m["content"]) for m in messages) or not is_utf8(str(given)):
            out.rejects.append(make_reject("prompts", f"line {lineno}", "invalid_text", f"line {lineno}: the text "
                                           "holds a lone surrogate (e.g. \\ud800), which is not a character; fix the "
                                           "file's escapes", obj))
            continue
        pid = str(given if given not in (None, "") else prompt_id(messages))
        problem = turn_problem(messages)
        if not any(m["content"].strip() for m in messages if m["role"] == "user"):
            out.rejects.append(make_reject("prompts", pid, "empty_prompt", f"line {lineno}: the prompt is empty or whitespace", obj))
        elif problem:
            out.rejects.append(make_reject("prompts", pid, problem[0], f"line {lineno}: {problem[1]}", obj))
        elif pid in seen:
            out.rejects.append(make_reject("prompts", pid, "duplicate_prompt", f"line {lineno}: {_duplicate(pid, given, seen[pid])}", obj))
        else:
            seen[pid] = given
            out.rows.append({"prompt_id": pid, "prompt": messages, **{k: obj.get(k) for k in keep}})
    if not out.rows:
        raise UserError(f"{file}: every row was rejected ({out.rejects[0]['reason']}); nothing to run")
    if near is not None:
        out.rows = drop_near_duplicates(out.rows, out.rejects, near, near_n)[:limit]
    out.rows = [r for r in out.rows if in_part(r["prompt_id"], part, parts)]
    if not out.rows:
        raise UserError(f"prompts.part: part {part} of {parts} holds none of the {file} prompts; use fewer parts")
    return out
