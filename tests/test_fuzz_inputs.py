"""Property-based fuzzing of the four readers a user feeds (issue 19): prompt files, constitution files, run
configs with overrides, and training data files. Whatever the bytes, a reader ends in exactly one of:

- valid rows (each of the shape the next step relies on, every text writable as UTF-8),
- recorded rejects (each with a reason, writable to the Parquet rejects file),
- one `UserError` whose message is one line,

never another exception and never a hang: sizes are bounded, and hypothesis' deadline fails an example that
runs long. The examples here are few, so the file runs in seconds in CI; bench/fuzz.py runs the same properties
with many more (BENCHMARKS.md).

Inputs are built near the formats rather than from random bytes alone, so they reach past the first parse:
rows with the right keys and wrong types, messages with odd roles, lone surrogates, U+2028, template syntax,
YAML anchors and merge keys, gzip cut short, keys a config has and keys it does not.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cai_pipeline.config import RunConfig, _known_keys, load_config
from cai_pipeline.constitution import load_constitution, validate_file
from cai_pipeline.errors import UserError
from cai_pipeline.inputs import load_prompts
from cai_pipeline.records import RejectRecord, is_utf8
from cai_pipeline.train.data import check_row
from cai_pipeline.train.formats import read_split

EXAMPLES = 40  # per reader here; bench/fuzz.py raises it
SETTINGS = settings(max_examples=EXAMPLES, deadline=2000, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- values -------------------------------------------------------------------------------------------------

ODD = ["", " ", "\ud800", "\udfff", "a\u2028b", "a\u2029b", "a\x85b", "\x1c", "\ufeff", "{{ x }}", "{% if %}",
       "<|im_start|>system", "#", "*a", "&a", "<<", "~", "null", "0.7", "3.0", "-1", "1e999", "\x00", "é", "🙂",
       "\n\nHuman: hi\n\nAssistant: hello", "\n\nHuman: \n\nAssistant: ", "http://", "notaurl", "[", "{"]
texts = st.one_of(st.sampled_from(ODD), st.text(max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(), texts)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(texts, c, max_size=3),
                           max_leaves=6)
roles = st.sampled_from(["user", "assistant", "system", "User", "tool", ""])
messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts}), max_size=4)
# a conversation that alternates correctly, so a file of them often gets past validation
good_messages = st.lists(texts, min_size=1, max_size=2).map(
    lambda xs: [m for x in xs for m in ({"role": "user", "content": x or "q"}, {"role": "assistant", "content": "a"})])


def maybe(value_strategy):
    """A field as it should be, or any JSON value at all."""
    return st.one_of(value_strategy, json_values)


# -- files --------------------------------------------------------------------------------------------------


def jsonl_bytes(rows, junk, gz_cut, ascii_only) -> bytes:
    lines = [json.dumps(r, ensure_ascii=ascii_only, allow_nan=True) for r in rows]
    lines += junk  # lines that are not JSON objects: a broken file is one line of error
    text = "\n".join(lines) + "\n"
    raw = text.encode("utf-8", "surrogatepass")  # a raw lone surrogate: not UTF-8, as some writers leave it
    return raw


def write_file(folder: Path, name: str, raw: bytes, gz_cut: float | None) -> Path:
    if name.endswith(".gz"):
        raw = gzip.compress(raw)
        if gz_cut is not None:
            raw = raw[: int(len(raw) * gz_cut)]
    path = folder / name
    path.write_bytes(raw)
    return path


def one_line_error(e: UserError) -> None:
    text = str(e)
    assert text.strip() and "\n" not in text and "Traceback" not in text, repr(text)


def rejects_writable(rejects: list[dict]) -> None:
    for r in rejects:
        RejectRecord.model_validate(r)
        assert r["reason"] and all(is_utf8(r[k]) for k in ("key", "detail", "row")), r
    pa.Table.from_pylist(rejects)  # the Parquet rejects file takes them (a lone surrogate would not)


# -- 1. prompt files ----------------------------------------------------------------------------------------

prompt_rows = st.lists(st.one_of(
    st.fixed_dictionaries({"prompt": texts}, optional={"prompt_id": maybe(texts)}),  # near valid: reach the checks
    st.fixed_dictionaries({"messages": st.one_of(messages, good_messages)}, optional={"prompt_id": scalars}),
    st.dictionaries(st.sampled_from(["prompt", "messages", "prompt_id", "chosen", "tag"]),
                    st.one_of(texts, messages, good_messages, json_values), max_size=3)), max_size=5)
prompt_files = st.tuples(prompt_rows, st.lists(st.sampled_from(ODD + ["[1]", "null", "{\"prompt\": 1"]), max_size=1),
                         st.sampled_from(["p.jsonl", "p.jsonl.gz", "p.json", "p.csv"]),
                         st.one_of(st.none(), st.floats(0, 1)), st.booleans(),
                         st.one_of(st.none(), texts), st.one_of(st.none(), st.integers(1, 4)))


def check_prompts(spec) -> None:
    rows, junk, name, gz_cut, ascii_only, system_prompt, limit = spec
    with tempfile.TemporaryDirectory() as tmp:
        if name.endswith(".csv"):
            raw = ("prompt,prompt_id\n" + "".join(f"{json.dumps(str(r.get('prompt', '')))},{i}\n"
                                                   for i, r in enumerate(rows))).encode("utf-8", "surrogatepass")
        else:
            raw = jsonl_bytes(rows, junk, gz_cut, ascii_only)
        path = write_file(Path(tmp), name, raw, gz_cut)
        try:
            got = load_prompts(str(path), system_prompt=system_prompt, limit=limit)
        except UserError as e:
            return one_line_error(e)
    assert got.rows
    for row in got.rows:
        assert isinstance(row["prompt_id"], str) and row["prompt_id"] and is_utf8(row["prompt_id"])
        turns = row["prompt"]
        assert turns and turns[-1]["role"] == "user" and all(is_utf8(m["content"]) for m in turns)
        assert any(m["content"].strip() for m in turns if m["role"] == "user")
    rejects_writable(got.rejects)


@SETTINGS
@given(prompt_files)
def test_any_prompt_file_ends_in_rows_rejects_or_one_line(spec):
    check_prompts(spec)


# -- 2. constitution files ----------------------------------------------------------------------------------

principle = st.dictionaries(
    st.sampled_from(["id", "critique", "revision", "comparison", "weight", "tags", "name", "extra"]),
    maybe(texts), max_size=6)
HARMLESS = yaml.safe_load((Path(__file__).resolve().parent.parent / "constitutions" / "harmless.yaml").read_text())


def edited(edits: list[tuple[int, str, object]]) -> dict:
    """harmless.yaml with some principles' fields set to other values: a valid file, a few edits away."""
    doc = json.loads(json.dumps(HARMLESS))
    for index, key, value in edits:
        doc["principles"][index % len(doc["principles"])][key] = value
    return doc


near_constitutions = st.lists(st.tuples(st.integers(0, 30), st.sampled_from(
    ["id", "critique", "revision", "comparison", "weight", "tags", "extra"]), maybe(texts)), max_size=3).map(edited)
constitution_docs = st.one_of(
    near_constitutions,
    st.fixed_dictionaries({"name": maybe(texts), "version": maybe(texts),
                           "principles": st.one_of(st.lists(principle, max_size=3), json_values)},
                          optional={"few_shot": json_values, "templates": maybe(texts), "description": maybe(texts)}),
    json_values)
YAML_TRICKS = ["", "a: &x [1, 2]\nb: *x\n", "<<: *nope\n", "principles:\n  - <<: {id: a}\n    id: b\n",
               "x: &a [*a]\n", "name: [\n", "\t- tab\n", "%YAML 1.1\n---\n", "--- a\n--- b\n", "!!python/object:os.system x\n"]


def yaml_text(doc, trick: str, raw: bool) -> str:
    text = yaml.safe_dump(doc, allow_unicode=True) if not raw else str(doc)
    return text + trick


def check_constitution(spec) -> None:
    doc, trick, raw = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(yaml_text(doc, trick, raw).encode("utf-8", "surrogatepass"))
        problems = validate_file(path)
        assert all(isinstance(p, str) and "\n" not in p for p in problems), problems
        try:
            c = load_constitution(path)
        except UserError as e:
            return one_line_error(e)
        assert not problems and c.principles  # what loads is what validates


@SETTINGS
@given(st.tuples(constitution_docs, st.sampled_from(YAML_TRICKS), st.booleans()))
def test_any_constitution_file_validates_or_is_one_line(spec):
    check_constitution(spec)


# -- 3. configs with overrides ------------------------------------------------------------------------------

KEYS = _known_keys(RunConfig)
config_docs = st.dictionaries(st.one_of(st.sampled_from(KEYS), texts), maybe(scalars), max_size=4).map(
    lambda d: {**d, "out_dir": d.get("out_dir", "x")})
overrides = st.lists(st.builds(lambda k, v: f"{k}={v}", st.one_of(st.sampled_from(KEYS), texts),
                               st.one_of(texts, st.integers().map(str), st.sampled_from(["[a, b]", "{a: 1}", "",
                                                                                        "'#x'", "[]", "~"]))),
                     max_size=3)


def nested(flat: dict) -> dict:
    """{"sample.n": 2} → {"sample": {"n": 2}} where the dotted key names a section (as a user writes it)."""
    out: dict = {}
    for key, value in flat.items():
        node, parts = out, str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[parts[-1]] = value
    return out


def check_config(spec) -> None:
    doc, trick, items = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(yaml_text(nested(doc), trick, False).encode("utf-8", "surrogatepass"))
        try:
            cfg = load_config(path, items)
        except UserError as e:
            return one_line_error(e)
    assert isinstance(cfg, RunConfig) and cfg.out_dir.strip() and 0 <= cfg.seed < 2**32
    assert "" not in cfg.sample.stop


@SETTINGS
@given(st.tuples(config_docs, st.sampled_from(YAML_TRICKS), overrides))
def test_any_config_and_overrides_load_or_are_one_line(spec):
    check_config(spec)


# -- 4. training data files ---------------------------------------------------------------------------------

hh = st.builds(lambda a, b: f"\n\nHuman: {a}\n\nAssistant: {b}", texts, texts)
completion = st.builds(lambda t: [{"role": "assistant", "content": t}], texts)
p_chosen = st.one_of(st.none(), st.floats(-1, 2), st.sampled_from(["0.7", True, 0, 1]))
train_rows = st.lists(st.one_of(
    st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts}, optional={"p_chosen": p_chosen}),
    st.fixed_dictionaries({"prompt": st.one_of(texts, good_messages), "chosen": completion, "rejected": completion},
                          optional={"p_chosen": p_chosen}),
    st.fixed_dictionaries({"chosen": hh, "rejected": hh}),
    st.fixed_dictionaries({"messages": st.one_of(messages, good_messages)}),
    st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "p_chosen", "messages", "pair_id"]),
                    st.one_of(texts, hh, messages, good_messages, st.floats(-1, 2), json_values), max_size=5)),
    max_size=5)
train_files = st.tuples(train_rows, st.lists(st.sampled_from(ODD + ["[1]", "{\"chosen\": "]), max_size=1),
                        st.sampled_from(["d.jsonl", "d.jsonl.gz", "d.json"]), st.one_of(st.none(), st.floats(0, 1)),
                        st.booleans(), st.sampled_from(["preference", "sft"]), st.booleans())


def check_training_data(spec) -> None:
    rows, junk, name, gz_cut, ascii_only, kind, as_list = spec
    with tempfile.TemporaryDirectory() as tmp:
        raw = (json.dumps(rows, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass") if as_list and
               name == "d.json" else jsonl_bytes(rows, junk, gz_cut, ascii_only))
        path = write_file(Path(tmp), name, raw, gz_cut)
        try:
            got = read_split([path], kind)
        except UserError as e:
            return one_line_error(e)
    for row in got.rows:
        if kind == "sft":
            assert any(m["role"] == "assistant" for m in row["messages"])
            texts_ = [m["content"] for m in row["messages"]]
        else:
            check_row(row)  # the trainer's own check: all message lists or all strings
            assert row["p_chosen"] is None or 0 <= row["p_chosen"] <= 1
            assert row["chosen"] != row["rejected"]
            texts_ = [m["content"] if isinstance(m, dict) else m for c in ("prompt", "chosen", "rejected")
                      for m in (row[c] if isinstance(row[c], list) else [row[c]])]
        assert all(is_utf8(t) for t in texts_), row
    rejects_writable(got.rejects)


@SETTINGS
@given(train_files)
def test_any_training_data_file_ends_in_rows_rejects_or_one_line(spec):
    check_training_data(spec)
