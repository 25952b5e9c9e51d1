"""One pydantic model per stage boundary, and its explicit pyarrow schema.

Rows travel between stages as plain dicts (Parquet in, Parquet out); these models are the contract for what
those dicts hold. `arrow_schema(Model)` derives the Parquet schema from the model, so the two cannot drift,
and `tests/test_records.py` round-trips every one of them.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Record):
    role: str
    content: str


class PromptRecord(Record):
    prompt_id: str
    prompt: list[Message]


class SampleRecord(Record):
    prompt_id: str
    sample_idx: int
    prompt: list[Message]
    response: str
    finish_reason: str
    n_tokens: int


class CheckOutcome(Record):
    passed: bool
    reason: str  # "passes", or why it fails


class Round(Record):
    principle_id: str
    critique: str
    revision: str
    cleaned: bool  # a boilerplate preamble ("Sure, here is a revised response:") was cut off
    kept_previous: str | None  # why the revision was not used (empty); the text stays as before
    truncated: bool  # the revision hit max_tokens (finish_reason "length")
    # The drawn principle's check on the response before this round and on what it holds after (None: no check)
    check_before: CheckOutcome | None = None
    check_after: CheckOutcome | None = None
    skipped: bool = False  # it already passed the check and revise.revise_passing is false: not revised


class ReviseRecord(Record):
    prompt_id: str
    sample_idx: int
    prompt: list[Message]
    initial: str
    initial_truncated: bool  # the sampled response hit max_tokens
    rounds: list[Round]
    final: str
    final_truncated: bool  # the text that ended as final hit max_tokens


class PairRecord(Record):
    pair_id: str
    prompt_id: str
    prompt: list[Message]
    a: str
    b: str
    origin: Literal["sampled", "revision"]
    a_idx: int  # sample index of a (revision pairs: the revised sample)
    b_idx: int
    a_truncated: bool  # a hit max_tokens: an unfinished text
    b_truncated: bool
    revision_principle_ids: list[str]  # revision pairs: the principles the revision applied; [] for sampled


class Verdict(Record):
    principle_id: str
    weight: float
    p_a_first: float  # P("A") normalised over {A, B}, with a shown as (A)
    p_a_second: float  # P("B") normalised over {A, B}, with a shown as (B): the probability a wins there
    reasoning_first: str | None
    reasoning_second: str | None
    source: Literal["judge", "check"] = "judge"  # a check decides the pairs it separates (checks.py)
    check_a: bool | None = None  # the principle's check on a (None: no check)
    check_b: bool | None = None


class JudgeRecord(PairRecord):
    judge_principle_ids: list[str]  # the principles the judge asked about this pair (its draw, not the revision's)
    verdicts: list[Verdict]
    p_a: float  # ensemble probability that a is better: mean over principles of ½(p_a_first + p_a_second)
    consistent: bool  # false when some principle's two orders picked the same position
    label_source: Literal["judge", "check", "mixed"] = "judge"  # where the verdicts came from


class RejectRecord(Record):
    stage: str
    key: str  # prompt_id, "prompt_id/sample_idx" or pair_id
    reason: str  # short, countable: "empty_prompt", "engine_error", "identical", "below_margin", ...
    detail: str
    row: str  # the input row as JSON, so nothing is lost


def make_reject(stage: str, key: str, reason: str, detail: str, row: dict) -> dict:
    """A RejectRecord dict: the one way a dropped or failed row is recorded, with the row itself kept."""
    text = json.dumps(row, ensure_ascii=False, default=str)
    if not is_utf8(text):  # a lone surrogate ("\\ud800" in JSON) cannot be written as UTF-8: keep it escaped
        text = json.dumps(row, default=str)
    return {"stage": stage, "key": key if is_utf8(key) else key.encode("utf-8", "backslashreplace").decode(),
            "reason": reason, "detail": detail if is_utf8(detail) else detail.encode("utf-8", "backslashreplace").decode(),
            "row": text}


def is_utf8(text: str) -> bool:
    """Whether a str can be written as UTF-8: JSON's "\\ud800" decodes to a lone surrogate, which cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SFTRecord(Record):
    prompt_id: str
    sample_idx: int
    messages: list[Message]
    principle_ids: list[str]  # the principles of the critique/revision rounds, in order
    truncated: bool  # the final text hit max_tokens: an unfinished response


class PreferenceRecord(Record):
    pair_id: str
    prompt_id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    p_chosen: float | None  # the judge's soft label; null where no judge ran
    revision_principle_ids: list[str]  # revision pairs: the principles the revision applied
    judge_principle_ids: list[str]  # the principles the judge asked about (empty where no judge ran)
    origin: Literal["sampled", "revision"]
    label_source: Literal["judge", "check", "mixed"] | None = None  # the verdicts' source; null: no judge ran
    chosen_truncated: bool  # hit max_tokens: an unfinished text
    rejected_truncated: bool


class ResponseCheck(Record):
    principle_id: str
    passed: bool
    reason: str


class AuditResponseRecord(Record):
    """audit/responses.parquet: one response of the audited model or the baseline."""

    prompt_id: str
    tag: str  # harmful | benign | held_out (the run's test split) | untagged, or a tag of the user's file
    side: Literal["model", "baseline"]
    model: str  # the name the audit loaded it by
    sample_idx: int
    prompt: list[Message]
    response: str
    finish_reason: str
    n_tokens: int
    p_refusal: float | None  # the judge's P("Yes") to "does the response decline?"; null with audit.refusal off
    refused: bool | None  # p_refusal > ½
    checks: list[ResponseCheck] = []  # each checkable principle's check on this response


class AuditVerdictRecord(Record):
    """audit/verdicts.parquet: one principle's verdict on one pair in one order."""

    pair_id: str
    prompt_id: str
    tag: str
    sample_idx: int  # the pair is the model's and the baseline's response number sample_idx
    principle_id: str
    weight: float
    order: Literal["model_first", "baseline_first"]  # which response was shown as (A)
    p_model: float  # the judge's probability that the model's response is better, in this order (over A/B)


class AuditComplianceRecord(Record):
    """audit/compliance.parquet: one principle's verdict on one response (pointwise compliance)."""

    side: Literal["model", "baseline"]
    prompt_id: str
    tag: str
    sample_idx: int
    principle_id: str
    source: str  # where the verdict came from: "judge" (prompts/violation.j2)
    p_violation: float  # P(the response violates the principle)
    violated: bool  # p_violation > ½


_SCALARS = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(tp: typing.Any) -> tuple[pa.DataType, bool]:
    """(arrow type, nullable) for a Python annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner, _ = _arrow_type(args[0])
        return inner, True
    if origin is Literal:
        return _SCALARS[type(typing.get_args(tp)[0])], False
    if origin is list:
        inner, nullable = _arrow_type(typing.get_args(tp)[0])
        return pa.list_(pa.field("item", inner, nullable=nullable)), False
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return pa.struct(_fields(tp)), False
    return _SCALARS[tp], False


def _fields(model: type[BaseModel]) -> list[pa.Field]:
    hints = typing.get_type_hints(model)
    out = []
    for name in model.model_fields:
        arrow, nullable = _arrow_type(hints[name])
        out.append(pa.field(name, arrow, nullable=nullable))
    return out


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    return pa.schema(_fields(model))


def to_table(rows: list[dict], model: type[BaseModel]) -> pa.Table:
    """Rows → a table of the model's schema. Arrow would quietly fill a missing key with null; we refuse,
    so a bug upstream can never become a None-filled row on disk."""
    schema = arrow_schema(model)
    names = set(schema.names)
    required = {f.name for f in schema if not f.nullable}
    for i, row in enumerate(rows):
        if row.keys() != names:
            diff = sorted(names - row.keys()) or sorted(row.keys() - names)
            raise ValueError(f"{model.__name__} row {i}: fields {diff} do not match the schema")
        nulls = [k for k in required if row[k] is None]
        if nulls:
            raise ValueError(f"{model.__name__} row {i}: {nulls} must not be null")
    return pa.Table.from_pylist(rows, schema=schema)
