"""Training data as people already have it: Parquet or JSON Lines, in TRL's layouts or as hh-rlhf transcripts.

Every row becomes one normalised row, or a reject with its reason (never a crash, never a silent drop):

preference rows → {prompt, chosen, rejected, p_chosen, _file} in TRL's explicit-prompt layout, from
  explicit      `prompt` + `chosen` + `rejected`: all message lists [{role, content}], or all strings (a string
                prompt with message completions is the user's turn)
  implicit      `chosen` / `rejected` as whole conversations that share the prompt turns (TRL's implicit prompt,
                UltraFeedback-binarized), with or without a string `prompt` column beside them
  hh-rlhf       `chosen` / `rejected` as "\\n\\nHuman: … \\n\\nAssistant: …" transcripts (Anthropic's hh-rlhf)
sft rows → {messages, _file}: a `messages` column of {role, content} lists (the export's datasets/sft)

A file that cannot be read, or that lacks the columns of any layout, is the user's to fix: one `UserError`
naming the file. `_file` is where the row came from ("file:line" or "file:row N"), for messages and rejects.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from cai_pipeline.errors import UserError
from cai_pipeline.records import is_utf8, make_reject

JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
SUFFIXES = (".parquet", *JSON_SUFFIXES)
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass
class ReadSplit:
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)  # RejectRecord dicts, stage "train"


# ---------------------------------------------------------------------------------------------- files


def is_data_file(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def _json_objects(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for a JSON Lines file (optionally gzipped), or a .json file holding one list of rows."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise UserError(f"{path}: not readable as (gzipped) UTF-8 JSON ({type(e).__name__}); re-save it") from None
    if text.lstrip().startswith("["):  # a .json file of one list, as `datasets` also accepts
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        return [(f"{path}:row {i + 1}", r) for i, r in enumerate(rows)]
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 in a text is no line end
        if line.strip():
            try:
                out.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object") from None
    return out


def _parquet_objects(path: Path) -> list[tuple[str, dict]]:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__}); re-export it") from None
    return [(f"{path}:row {i + 1}", r) for i, r in enumerate(table.to_pylist())]


def read_objects(path: Path) -> list[tuple[str, dict]]:
    rows = _parquet_objects(path) if path.name.lower().endswith(".parquet") else _json_objects(path)
    for where, row in rows:
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object with named fields, got {type(row).__name__}")
    return rows


def _columns(path: Path, rows: list[tuple[str, dict]]) -> set[str]:
    if path.name.lower().endswith(".parquet"):
        return set(pq.read_schema(path).names)
    return set().union(*(r.keys() for _, r in rows)) if rows else set()


# ---------------------------------------------------------------------------------------------- values


def is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _plain(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def hh_turns(transcript: str) -> list[dict] | None:
    """An hh-rlhf transcript as messages (Human → user, Assistant → assistant); None if it is not one."""
    parts = _HH_TURN.split("\n\n" + transcript.lstrip("\n"))
    if len(parts) < 3 or parts[0].strip():
        return None
    return [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(parts[1::2], parts[2::2])]


def shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list] | str:
    """Split two whole conversations into (prompt, chosen completion, rejected completion): the prompt is every
    turn they share, and each completion must start with the assistant's reply to it. A str is the reason
    they cannot be split so."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) == len(rejected):
        return "identical"
    c, r = chosen[n:], rejected[n:]
    if n == 0 or not c or not r or chosen[n - 1]["role"] == "assistant" or \
            c[0]["role"] != "assistant" or r[0]["role"] != "assistant":
        return "prompt_not_shared"
    return chosen[:n], c, r


def _p_chosen(value) -> float | str | None:
    """The judge's probability, None where the row has none, or a reason it cannot be one (a number outside
    [0, 1] would train towards an impossible target: the loss runs off to minus infinity)."""
    if value is None or isinstance(value, float) and math.isnan(value):  # Parquet's null, pandas' NaN
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return "bad_p_chosen"


def _text(value) -> str:
    """The words of a prompt or completion: a string, or the contents of its messages."""
    return value if isinstance(value, str) else " ".join(m["content"] for m in value)


def pair_problem(got: dict) -> str | None:
    """Why a normalised pair cannot be trained on: nothing to learn from (identical), or an empty part."""
    if got["chosen"] == got["rejected"]:
        return "identical"
    for part in ("prompt", "chosen", "rejected"):
        if not _text(got[part]).strip():
            return f"empty_{part}"
    return None


# ---------------------------------------------------------------------------------------------- layouts


_DETAILS = {
    "identical": "chosen and rejected are the same conversation",
    "prompt_not_shared": "chosen and rejected do not share the prompt turns (they must be the same conversation "
                         "up to the assistant's reply, which differs)",
    "prompt_mismatch": "the `prompt` column is none of the user turns that chosen and rejected share",
    "not_hh_transcript": "chosen/rejected are plain strings with no prompt column and are not hh-rlhf "
                         "'\\n\\nHuman: … \\n\\nAssistant: …' transcripts",
    "bad_types": "prompt/chosen/rejected must be message lists [{role, content}] or strings, all of one kind",
    "empty_prompt": "the prompt is empty or whitespace",
    "invalid_text": "a text holds a lone surrogate (e.g. \\ud800), which is not a character; fix the file's escapes",
    "empty_chosen": "the chosen response is empty or whitespace",
    "empty_rejected": "the rejected response is empty or whitespace",
}


def preference_row(row: dict) -> dict | str:
    """One row in any preference layout → {prompt, chosen, rejected} (message lists, or strings), or a reason."""
    prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
    if isinstance(chosen, str) and isinstance(rejected, str) and prompt is None:
        chosen, rejected = hh_turns(chosen), hh_turns(rejected)
        if chosen is None or rejected is None:
            return "not_hh_transcript"
    if isinstance(prompt, str) and is_messages(chosen) and is_messages(rejected):
        if chosen[0]["role"] == "assistant":  # explicit, with the prompt given as its text
            prompt = [{"role": "user", "content": prompt}]
        else:  # implicit with a redundant prompt string (UltraFeedback-binarized): it must agree
            split = shared_prompt(_plain(chosen), _plain(rejected))
            if isinstance(split, str):
                return split
            users = {m["content"].strip() for m in split[0] if m["role"] == "user"}
            return {"prompt": split[0], "chosen": split[1], "rejected": split[2]} if prompt.strip() in users \
                else "prompt_mismatch"
    if prompt is None and is_messages(chosen) and is_messages(rejected):
        split = shared_prompt(_plain(chosen), _plain(rejected))
        return split if isinstance(split, str) else dict(zip(("prompt", "chosen", "rejected"), split))
    if all(is_messages(v) for v in (prompt, chosen, rejected)):
        return {"prompt": _plain(prompt), "chosen": _plain(chosen), "rejected": _plain(rejected)}
    if all(isinstance(v, str) for v in (prompt, chosen, rejected)):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return "bad_types"


def sft_row(row: dict) -> dict | str:
    messages = row.get("messages")
    if not is_messages(messages):
        return "bad_types"
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant_turn"
    return {"messages": _plain(messages)}


def _key(where: str, obj: dict) -> str:
    return str(obj.get("pair_id") or obj.get("prompt_id") or where)


def read_split(files: list[Path], kind: str) -> ReadSplit:
    """Every row of `files` as a normalised row of `kind` ("preference" or "sft"), or a reject."""
    wanted = ({"messages"},) if kind == "sft" else ({"chosen", "rejected"},)
    out = ReadSplit()
    for path in files:
        objects = read_objects(path)
        missing = sorted(wanted[0] - _columns(path, objects))
        if missing:
            need = "a messages column (a list of {role, content})" if kind == "sft" else \
                "chosen and rejected columns (with or without prompt: TRL's layouts, or hh-rlhf transcripts)"
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; {kind} training needs {need}")
        for where, obj in objects:
            got = sft_row(obj) if kind == "sft" else _preference(obj)
            if isinstance(got, dict) and not all(is_utf8(t) for t in _strings(got)):
                got = "invalid_text"
            if isinstance(got, str):
                out.rejects.append(make_reject("train", _key(where, obj), got, f"{where}: {_detail(got, obj)}", obj))
                continue
            out.rows.append({**got, "_file": where})
    return out


def _strings(value):
    """Every str inside a row (message contents, texts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _preference(obj: dict) -> dict | str:
    got = preference_row(obj)
    if isinstance(got, str):
        return got
    p_chosen = _p_chosen(obj.get("p_chosen"))
    if isinstance(p_chosen, str):
        return p_chosen
    return pair_problem(got) or {**got, "p_chosen": p_chosen}


def _detail(reason: str, obj: dict) -> str:
    if reason == "bad_p_chosen":
        value = obj.get("p_chosen")
        fix = "write it as a number, not text" if isinstance(value, str) else "it is a probability"
        return f"p_chosen is {value!r}: it must be a number from 0 to 1 ({fix}), or absent"
    return _DETAILS.get(reason, "messages must be a list of {role, content} with an assistant turn")
