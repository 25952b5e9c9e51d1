"""Responses from files: an audit side that is a log of conversations instead of a model (`audit.responses`,
`audit.baseline_responses`). Pure: files in, rows and rejects out; no engine, no run folder.

Each JSONL/Parquet/CSV row is read in the first of these shapes it matches (one row may carry several responses):

    OpenAI log line   {"request": {"messages": [...]}, "response": {"choices": [{"message": {...}}, ...]}}
                      (the response may sit under "body", as in Batch API output files; one response per choice)
    TRL conversational {"prompt": [{role, content}, ...], "completion": [{"role": "assistant", ...}]}
                      (or TRL's standard form, both strings)
    prompt + response  {"prompt": "..." or "messages": [...], "response": "..." or ["...", ...]}
    messages          {"messages": [..., {"role": "assistant", "content": <the response>}]}
    hh-rlhf           {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ..."} (or "transcript"): the last Assistant
                      turn is the response, everything before it the prompt

A prompt's key is its `prompt_id` when the row gives one, else the hash of its messages (inputs.prompt_id), so
the same conversation gets the same key in every file; responses to one prompt are numbered in file order.
A row that is not one of these, or whose response is empty, is a reject with its reason: never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from cai_pipeline.errors import UserError
from cai_pipeline.inputs import hh_split, prompt_id, read_rows, turn_problem
from cai_pipeline.records import make_reject

_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class LogRow:
    """One logged response, whatever format it came in: the conversation it answers and the response."""

    prompt_id: str
    prompt: list[dict]  # the messages the response answers, ending with the user's turn
    response: str
    sample_idx: int  # its number among the responses to this prompt in this file (file order)
    tag: str
    model: str  # the model the log names, else the file's name
    n_tokens: int  # the log's completion_tokens when given (OpenAI usage), else whitespace words
    length_unit: str  # "tokens" | "words": what n_tokens counts

    def as_dict(self) -> dict:
        return asdict(self)


class BadRow(ValueError):
    """A row this reader cannot use: its message is the reject's detail, its `reason` the reject's reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _turns(value, field: str) -> list[dict]:
    """A list of {role, content} (CSV carries it as a JSON string), roles and content checked."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow("bad_messages", f"'{field}' is not a JSON list of {{role, content}}") from None
    if not isinstance(value, list) or not value:
        raise BadRow("bad_messages", f"'{field}' must be a non-empty list of {{role, content}}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise BadRow("bad_messages", f"{field}[{i}] must be {{role: system|user|assistant, content: str}}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _prompt(value, field: str) -> list[dict]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else _turns(value, field)


def _openai(obj: dict) -> tuple[list[dict], list[str], str | None, list[int | None]]:
    request, response = obj["request"], obj["response"]
    request = request.get("body", request) if isinstance(request, dict) else request
    response = response.get("body", response) if isinstance(response, dict) else response
    if not isinstance(request, dict) or not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise BadRow("bad_openai_log", "an OpenAI log line needs request.messages and response.choices")
    choices = response["choices"]
    texts = [(c.get("message") or {}).get("content") if isinstance(c, dict) else None for c in choices]
    usage = response.get("usage") or {}
    # usage counts all choices together: a per-response length only when there is one choice
    n = [usage.get("completion_tokens")] if len(choices) == 1 else [None] * len(choices)
    return _turns(request.get("messages"), "request.messages"), texts, response.get("model") or request.get("model"), n


def parse_row(obj: dict) -> tuple[list[dict], list[str], str | None, list[int | None]]:
    """(prompt messages, responses, model named by the log or None, completion tokens per response or None)."""
    if "request" in obj and "response" in obj:
        return _openai(obj)
    if obj.get("completion") is not None and obj.get("prompt") is not None:  # TRL prompt-completion
        completion = obj["completion"]
        texts = [completion] if isinstance(completion, str) else [m["content"] for m in
                                                                   _turns(completion, "completion")[-1:]]
        return _prompt(obj["prompt"], "prompt"), texts, obj.get("model"), [None]
    if obj.get("response") is not None or obj.get("responses") is not None:
        given = obj["response"] if obj.get("response") is not None else obj["responses"]
        texts = given if isinstance(given, list) else [given]
        source = "messages" if obj.get("messages") is not None else "prompt"
        if obj.get(source) is None:
            raise BadRow("no_prompt", "a row with 'response' needs 'prompt' or 'messages'")
        return _prompt(obj[source], source), texts, obj.get("model"), [None] * len(texts)
    if obj.get("messages") is not None:
        turns = _turns(obj["messages"], "messages")
        if turns[-1]["role"] != "assistant":
            raise BadRow("no_response", "'messages' does not end with an assistant turn (the response); add it, "
                         "or give the response in a 'response' field")
        return turns[:-1], [turns[-1]["content"]], obj.get("model"), [None]
    for field in ("chosen", "transcript"):  # hh-rlhf (chosen) and its red-team-attempts file (transcript)
        if isinstance(obj.get(field), str):
            prompt, reply = hh_split(obj[field])
            return prompt, [reply], obj.get("model"), [None]
    raise BadRow("unknown_format", "not a log row: give messages (ending with the response), prompt/messages + "
                 "response, TRL prompt + completion, an OpenAI request/response pair, or an hh-rlhf transcript")


def read_log(path: str, key: str) -> tuple[list[LogRow], list[dict]]:
    """(rows, rejects) of one log file; `key` names the setting in messages (audit.responses, ...)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{key}: {path} does not exist; point it at a JSONL, Parquet or CSV log of conversations")
    rows, rejects, seen = [], [], Counter()
    for lineno, obj in read_rows(file, "auto"):
        try:
            messages, texts, model, n_tokens = parse_row(obj)
            problem = turn_problem(messages)
            if problem:
                raise BadRow(*problem)
        except BadRow as e:
            rejects.append(make_reject("audit", f"{file.name}:{lineno}", e.reason, f"{file}:{lineno}: {e}", obj))
            continue
        given = obj.get("prompt_id")
        pid = str(given) if given not in (None, "") else prompt_id(messages)
        tag = str(obj.get("tag") or "untagged").strip().lower()
        for text, n in zip(texts, n_tokens):
            if not isinstance(text, str) or not text.strip():
                rejects.append(make_reject("audit", f"{file.name}:{lineno}", "empty_response",
                                           f"{file}:{lineno}: the response is empty or not text", obj))
                continue
            unit = "tokens" if isinstance(n, int) else "words"
            rows.append(LogRow(pid, messages, text, seen[pid], tag, str(model or file.name),
                               n if isinstance(n, int) else len(text.split()), unit))
            seen[pid] += 1
    if not rows:
        reason = rejects[0]["detail"] if rejects else "the file has no rows"
        raise UserError(f"{key}: no usable response in {path} ({reason})")
    return rows, rejects


# ---------------------------------------------------------------------------------------------------------
# Two sides by prompt


def match(model: list[dict], baseline: list[dict]) -> tuple[list[tuple[dict, dict]], dict]:
    """The model's i-th response to a prompt against the baseline's i-th, for the prompts both sides answered.

    Returns (pairs, unmatched), unmatched counting what has no partner: prompts only one side answered, and
    responses beyond the other side's count on a shared prompt ("extra"). Nothing is dropped uncounted."""
    by_key = {(r["prompt_id"], r["sample_idx"]): r for r in baseline}
    pairs = [(r, by_key[r["prompt_id"], r["sample_idx"]]) for r in model if (r["prompt_id"], r["sample_idx"]) in by_key]
    prompts = {side: {r["prompt_id"] for r in rows} for side, rows in (("model", model), ("baseline", baseline))}
    both = prompts["model"] & prompts["baseline"]
    unmatched = {}
    for side, rows, other in (("model", model, "baseline"), ("baseline", baseline, "model")):
        only = prompts[side] - prompts[other]
        unmatched[f"{side}_only_prompts"] = len(only)
        unmatched[f"{side}_only_responses"] = sum(r["prompt_id"] in only for r in rows)
        unmatched[f"{side}_extra_responses"] = sum(r["prompt_id"] in both for r in rows) - len(
            [p for p in pairs if p[0]["prompt_id"] in both])
    return pairs, unmatched


def log_prompts(*sides: list[dict]) -> list[dict]:
    """{prompt_id, prompt, tag} of every prompt the logs answered, first appearance first: what a model side
    is asked when the other side is a log."""
    first: dict[str, dict] = {}
    for rows in sides:
        for r in rows:
            first.setdefault(r["prompt_id"], {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "tag": r["tag"]})
    return list(first.values())
