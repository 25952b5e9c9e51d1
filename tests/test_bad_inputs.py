"""The bad-input catalogue: everything a user can get wrong, through the real CLI. Each case ends in one clear
line on stderr and exit code 2 (never a traceback), or in a per-row reject with its reason — and never loses
rows already written.

Most cases need no model: an error that stops the run comes before any engine starts, and cases about the
run folder use a stand-in engine. Prompts longer than the context go through the real transformers engine.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import cai_pipeline.engines
from cai_pipeline.cli import main
from cai_pipeline.errors import UserError
from tests.conftest import REPO, later_wins, one_line
from tests.echo_engine import EchoEngine
from tests.fault_proxy import STUB_MODEL, FaultProxy

CONFIG = str(REPO / "configs" / "demo.yaml")
BASE = ["prompts.limit=4", "shard_size=2", "sample.max_tokens=8", "revise.max_tokens=8", "revise.rounds=1",
        "revise.few_shot=0", "stages=[sample]"]


def cai(tmp_path: Path, *overrides: str, config: str = CONFIG, flags: tuple = ()) -> int:
    return main(["run", config, *later_wins(f"out_dir={tmp_path / 'run'}", *BASE, *overrides), *flags])



def write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def jsonl(path: Path, rows: list) -> str:
    return write(path, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def rows(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def samples_and_empty(tmp_path) -> int:
    """Samples written plus samples the model left empty (rejected as such): what the engine produced."""
    empty = [r for r in rows(tmp_path / "run" / "rejects" / "sample") if r["reason"] == "empty_response"]
    return len(rows(tmp_path / "run" / "sample")) + len(empty)


@pytest.fixture
def echo(monkeypatch):
    """Every engine the pipeline builds is a stand-in: these cases are about inputs and folders."""
    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: EchoEngine())


# -- the config ---------------------------------------------------------------------------------------------


def test_malformed_yaml(tmp_path, capsys):
    cfg = write(tmp_path / "bad.yaml", "out_dir: x\nsample: [1, 2\nseed: 3\n")
    one_line(capsys, cai(tmp_path, config=cfg), "bad.yaml:", "YAML syntax error")


def test_unknown_key_suggests_the_right_one(tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", "out_dir: x\nsampel:\n  n: 2\n")
    one_line(capsys, cai(tmp_path, config=cfg), "unknown key 'sampel'", "did you mean 'sample'")


def test_unknown_nested_key_in_an_override(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, "engine.kinds=vllm"), "unknown key 'engine.kinds'", "engine.kind")


def test_wrong_type(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, "sample.n=two"), "sample.n", "'two'")


def test_value_out_of_range(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, "sample.temperature=-1"), "sample.temperature", "greater than or equal to 0")


def test_missing_config_file(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, config=str(tmp_path / "nope.yaml")), "nope.yaml: file not found")


def test_config_that_is_not_a_mapping(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, config=write(tmp_path / "l.yaml", "- a\n- b\n")), "expected a mapping")


def test_config_that_is_not_utf8(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, config=write(tmp_path / "b.yaml", b"out_dir: \xff\xfe\n")), "not UTF-8")


def test_override_without_a_value(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, "prompts.limit"), "expected key=value")


def test_unknown_stage_flag(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, flags=("--stages", "sample,jduge")), "unknown stage 'jduge'")


# -- prompt files -------------------------------------------------------------------------------------------


def test_missing_prompt_file(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, f"prompts.path={tmp_path / 'no.jsonl'}"), "prompts.path", "does not exist")


def test_empty_prompt_file(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, f"prompts.path={write(tmp_path / 'e.jsonl', '')}"), "no prompts in the file")


def test_prompt_file_that_is_not_utf8(tmp_path, capsys):
    path = write(tmp_path / "p.jsonl", b'{"prompt": "caf\xe9"}\n')
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "p.jsonl", "not UTF-8")


def test_prompt_file_with_a_broken_line(tmp_path, capsys):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, '{"prompt": "cut sho'])
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "p.jsonl:2:", "not valid JSON")


def test_prompt_row_without_a_prompt(tmp_path, capsys):
    path = jsonl(tmp_path / "p.jsonl", [{"question": "where is the prompt?"}])
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "p.jsonl:1:", "neither 'prompt' nor 'messages'")


def test_prompt_messages_with_an_unknown_role(tmp_path, capsys):
    path = jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "wizard", "content": "hi"}]}])
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "p.jsonl:1:", "'messages' must be")


def test_prompt_file_of_an_unknown_type(tmp_path, capsys):
    path = write(tmp_path / "p.txt", "How are tides made?\n")
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "unknown prompt file type")


def test_damaged_parquet_prompt_file(tmp_path, capsys):
    path = write(tmp_path / "p.parquet", b"PAR1 this is not really parquet")
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "cannot read as Parquet")


def test_duplicate_prompt_ids_are_rejected_per_row(tmp_path, echo):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt_id": "a", "prompt": "one"}, {"prompt_id": "b", "prompt": "two"},
                                        {"prompt_id": "a", "prompt": "one again"}])
    assert cai(tmp_path, f"prompts.path={path}") == 0
    rejects = rows(tmp_path / "run" / "rejects" / "prompts")
    assert [(r["key"], r["reason"]) for r in rejects] == [("a", "duplicate_prompt")]
    assert {r["prompt_id"] for r in rows(tmp_path / "run" / "sample")} == {"a", "b"}


def test_empty_prompts_are_rejected_per_row(tmp_path, echo):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "   "}, {"prompt": "a real one"}])
    assert cai(tmp_path, f"prompts.path={path}") == 0
    assert [r["reason"] for r in rows(tmp_path / "run" / "rejects" / "prompts")] == ["empty_prompt"]
    assert samples_and_empty(tmp_path) == 2  # n=2 samples of the one real prompt


@pytest.mark.model
def test_prompts_longer_than_the_context_are_rejected_per_row(tmp_path, model_path):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "word " * 400}, {"prompt": "Say hello."}])
    assert cai(tmp_path, f"prompts.path={path}", "engine.kind=hf", "engine.max_model_len=256") == 0
    [reject] = [r for r in rows(tmp_path / "run" / "rejects" / "sample") if r["reason"] == "too_long"]
    assert "fills the context (256)" in reject["detail"]
    assert samples_and_empty(tmp_path) == 2  # the short prompt's two samples


@pytest.mark.model
def test_max_tokens_the_context_cannot_hold(tmp_path, capsys, model_path):
    code = cai(tmp_path, "engine.kind=hf", "engine.max_model_len=64", "sample.max_tokens=100")
    one_line(capsys, code, "sample.max_tokens=100", "context of 64")


# -- constitutions and templates ----------------------------------------------------------------------------


def constitution(tmp_path: Path, critique_template: str | None = None, drop: str | None = None) -> str:
    text = (REPO / "constitutions" / "harmless.yaml").read_text()
    if critique_template is not None:
        shutil.copytree(REPO / "prompts", tmp_path / "tpl")
        write(tmp_path / "tpl" / "critique.j2", critique_template)
        text += "\ntemplates: tpl\n"
    if drop:
        text = text.replace(drop, "", 1)
    return write(tmp_path / "c.yaml", text)


def test_missing_constitution(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, f"constitution={tmp_path / 'none.yaml'}"), "none.yaml")


def test_constitution_yaml_syntax_error(tmp_path, capsys):
    path = write(tmp_path / "c.yaml", "name: x\nprinciples: [\n")
    one_line(capsys, cai(tmp_path, f"constitution={path}"), "c.yaml:", "syntax error")


def test_constitution_principle_without_a_critique(tmp_path, capsys):
    first = (REPO / "constitutions" / "harmless.yaml").read_text().split("    critique: >-")[1].split("    revision:")[0]
    path = constitution(tmp_path, drop="    critique: >-" + first)
    one_line(capsys, cai(tmp_path, f"constitution={path}"), "c.yaml:", "critique")


def test_template_with_an_undefined_variable(tmp_path, capsys):
    path = constitution(tmp_path, "Critique against: {{ principl.critique }}")
    one_line(capsys, cai(tmp_path, f"constitution={path}"), "critique.j2:1", "principl")


def test_template_escape_attempt_is_refused_before_the_run(tmp_path, capsys):
    path = constitution(tmp_path, "{{ principle.__class__.__mro__[1].__subclasses__() }}")
    one_line(capsys, cai(tmp_path, f"constitution={path}"), "critique.j2:1", "__class__")


def test_template_escape_past_the_static_check_is_refused_by_the_sandbox(tmp_path, capsys, echo):
    """`attr()` hides the attribute from the static check; the sandbox still refuses it when rendered. The
    run's plan renders every principle's critique to count its tokens, so that is before anything is generated."""
    path = constitution(tmp_path, "{{ principle | attr('__class__') }}")
    code = cai(tmp_path, f"constitution={path}", "stages=[sample,revise]")
    one_line(capsys, code, "critique.j2", "refused")
    assert not (tmp_path / "run" / "sample").exists() and not (tmp_path / "run" / "revise").exists()


# -- servers ------------------------------------------------------------------------------------------------


def test_unreachable_server(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    code = cai(tmp_path, "engine.kind=openai", f"engine.base_url=http://127.0.0.1:{port}/v1")
    one_line(capsys, code, "engine.base_url", "cannot reach", str(port))


def test_api_key_variable_not_set(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CAI_TEST_UNSET_KEY", raising=False)
    with FaultProxy(None) as stub:
        code = cai(tmp_path, "engine.kind=openai", f"engine.base_url={stub.url}", "engine.api_key_env=CAI_TEST_UNSET_KEY")
    one_line(capsys, code, "CAI_TEST_UNSET_KEY", "not set")


def test_server_returning_malformed_json(tmp_path):
    with FaultProxy(None, malformed=1.0) as stub:
        code = cai(tmp_path, "engine.kind=openai", f"engine.base_url={stub.url}", f"engine.served_model={STUB_MODEL}",
                   "engine.max_retries=1")
    assert code == 0  # the rows are rejected, the run goes on
    rejects = rows(tmp_path / "run" / "rejects" / "sample")
    assert len(rejects) == 4 and {r["reason"] for r in rejects} == {"server_error"}
    assert "malformed response: not JSON" in rejects[0]["detail"]


# -- the run folder -----------------------------------------------------------------------------------------


def test_run_folder_from_a_different_config(tmp_path, capsys, echo):
    assert cai(tmp_path) == 0
    before = rows(tmp_path / "run" / "sample")
    capsys.readouterr()
    one_line(capsys, cai(tmp_path, "sample.n=3", "sample.temperature=0.3"), "sample.n", "sample.temperature",
             "--restart")
    assert rows(tmp_path / "run" / "sample") == before


def test_a_folder_another_run_holds_is_refused(tmp_path, capsys, echo):
    from cai_pipeline.store import RunStore

    (tmp_path / "run").mkdir()
    with RunStore(tmp_path / "run").lock():  # as another `cai run` would hold it
        one_line(capsys, cai(tmp_path), "in use by another run", f"pid {os.getpid()}", "another out_dir")
        assert not (tmp_path / "run" / "manifest.json").exists()
    assert cai(tmp_path) == 0  # free again once the holder lets go (or dies: the kernel drops the lock)


def test_damaged_manifest(tmp_path, capsys, echo):
    assert cai(tmp_path) == 0
    write(tmp_path / "run" / "manifest.json", '{"stages": {')
    capsys.readouterr()
    one_line(capsys, cai(tmp_path), "damaged manifest", "--restart")


def test_stage_whose_input_is_missing(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, flags=("--stages", "revise")), "stage revise needs sample/", "--stages sample")


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = write(tmp_path / "a-file", "not a folder")
    one_line(capsys, main(["run", CONFIG, f"out_dir={blocker}/run", *BASE]), "out_dir", "cannot write")


def test_unknown_model(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, "model=./no/such/model", "engine.kind=hf"), "model:", "does not exist")


def test_full_disk_injected_at_a_write(tmp_path, capsys, echo, monkeypatch):
    """The third shard's write fails with ENOSPC: one line; the two shards before it stay whole, and the
    same command resumes once there is space."""
    import cai_pipeline.store as store

    real = store.atomic_write

    def no_space(tmp):
        tmp.write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def atomic_write(path, write):  # the data part of shard 2 (its rejects and stats are written before it)
        hit = path.name == "part-00002.parquet" and "rejects" not in str(path)
        return real(path, no_space if hit else write)

    monkeypatch.setattr(store, "atomic_write", atomic_write)
    one_line(capsys, cai(tmp_path, "prompts.limit=6"), "No space left on device", "part-00002")
    assert len(rows(tmp_path / "run" / "sample")) == 8 and not list((tmp_path / "run").rglob("*.tmp"))
    monkeypatch.setattr(store, "atomic_write", real)
    assert cai(tmp_path, "prompts.limit=6") == 0
    assert len(rows(tmp_path / "run" / "sample")) == 12


def test_full_disk_on_a_tiny_tmpfs(tmp_path, capsys, echo):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_full_disk_injected_at_a_write covers the same path")
    try:
        prompts = jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i} " + "x" * 300} for i in range(60)])
        code = main(["run", CONFIG, *later_wins(f"out_dir={mount / 'run'}", *BASE, "prompts.limit=60",
                                                f"prompts.path={prompts}")])
        line = one_line(capsys, code, "No space left on device")
        done = rows(mount / "run" / "sample")
        assert 0 < len(done) < 120, line  # some shards made it, whole and readable; the rest did not start
        assert len(done) % 4 == 0  # whole shards only: 2 prompts × n=2
    finally:
        subprocess.run(["umount", str(mount)], check=False)



# -- messy inputs a new user fed it (issue 10) ----------------------------------------------------------------


def test_a_bom_at_the_start_of_jsonl_and_csv_is_read(tmp_path, echo):
    bom = "\ufeff"
    for name, text in (("p.jsonl", bom + json.dumps({"prompt": "one"}) + "\n"), ("p.csv", bom + "prompt\none\n")):
        path = write(tmp_path / name, text)
        assert cai(tmp_path, f"prompts.path={path}", f"out_dir={tmp_path / ('run-' + name)}") == 0
        assert len(rows(tmp_path / ("run-" + name) / "sample")) == 2


def test_a_role_that_is_not_one_of_the_three(tmp_path, capsys):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"messages": [{"role": "User", "content": "hi"}]}])
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "p.jsonl:2:", "messages[0].role is 'User'",
             "system, user or assistant")  # the row, the role found, the ones allowed


def test_ids_equal_after_conversion_to_text_say_so(tmp_path, echo):
    path = jsonl(tmp_path / "p.jsonl", [{"prompt_id": 1, "prompt": "one"}, {"prompt_id": "1", "prompt": "two"}])
    assert cai(tmp_path, f"prompts.path={path}") == 0
    [reject] = rows(tmp_path / "run" / "rejects" / "prompts")
    assert reject["reason"] == "duplicate_prompt" and "after conversion to text" in reject["detail"]


def test_a_config_key_given_twice(tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", "out_dir: x\nseed: 1\nsample:\n  n: 2\nseed: 2\n")
    one_line(capsys, cai(tmp_path, config=cfg), "c.yaml:5:", "seed", "appears twice")


def test_a_stop_string_that_yaml_reads_as_a_comment(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, "sample.stop=###"), "sample.stop", "comment", "quote it")
    cfg = write(tmp_path / "c.yaml", f"out_dir: {tmp_path / 'y'}\nsample:\n  stop: ###\n")
    one_line(capsys, cai(tmp_path, config=cfg), "sample.stop", "quote it")


def test_a_single_stop_string_is_a_list_of_one(tmp_path, echo):
    assert cai(tmp_path, "sample.stop=END") == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["sample"]["stop"] == ["END"]


def test_more_judge_principles_than_the_constitution_has(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, "judge.principles=99"), "judge.principles=99", "at most")
    assert not (tmp_path / "run").exists()


def test_api_key_variable_set_but_empty(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAI_TEST_EMPTY_KEY", "")
    with FaultProxy(None) as stub:
        code = cai(tmp_path, "engine.kind=openai", f"engine.base_url={stub.url}", "engine.api_key_env=CAI_TEST_EMPTY_KEY")
    one_line(capsys, code, "CAI_TEST_EMPTY_KEY", "set but empty")


def test_a_bad_judge_model_fails_before_any_stage_runs(tmp_path, capsys, echo):
    code = cai(tmp_path, f"judge.model={tmp_path / 'no-judge'}", "stages=[sample,revise,pairs,judge]")
    one_line(capsys, code, "judge.model", "does not exist")
    assert not (tmp_path / "run").exists()  # nothing ran, nothing was written


def model_folder(tmp_path: Path, model_path: str, drop: tuple[str, ...], edit=None) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(model_path, folder)
    for name in drop:
        (folder / name).unlink()
    if edit:
        edit(folder)
    return folder


@pytest.mark.parametrize("drop,needle", [
    (("tokenizer.json", "tokenizer_config.json"), "has no tokenizer"),
    (("chat_template.jinja",), "without a chat template"),
])
def test_a_model_folder_that_cannot_run_is_one_line_before_any_stage(tmp_path, capsys, model_path, drop, needle):
    folder = model_folder(tmp_path, model_path, drop)
    for key in ("model", "judge.model", "train.model"):
        code = cai(tmp_path, f"{key}={folder}", "stages=[sample,judge,train]")
        one_line(capsys, code, key, needle)
    assert not (tmp_path / "run").exists()


# -- a careful new user's inputs (issue 19) -----------------------------------------------------------------


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Nine anchors, each a list of nine aliases of the one before: 467 bytes that expand to 9^9 values."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_one_line_at_once(tmp_path, capsys):
    import time

    bomb = alias_bomb()
    start = time.monotonic()
    code = main(["constitution", "validate", write(tmp_path / "bomb.yaml", "name: x\nversion: '1'\n" + bomb)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and len(out) == 1 and "alias bomb" in out[0] and "bomb.yaml:" in out[0], out
    one_line(capsys, cai(tmp_path, config=write(tmp_path / "c.yaml", bomb)), "c.yaml:", "alias bomb")
    assert time.monotonic() - start < 10  # was 287 s and 5.6 GB for the constitution alone


def test_an_alias_that_contains_itself_or_a_file_nested_too_deep(tmp_path, capsys):
    one_line(capsys, cai(tmp_path, config=write(tmp_path / "r.yaml", "a: &a [*a]\n")), "r.yaml:1", "endless loop")
    deep = "seed: " + "[" * 5000 + "]" * 5000 + "\n"
    one_line(capsys, cai(tmp_path, config=write(tmp_path / "d.yaml", deep)), "d.yaml", "nested too deeply")


def test_yaml_merge_keys_work_and_are_not_a_repeated_key(tmp_path, capsys):
    from cai_pipeline.config import load_config

    cfg = write(tmp_path / "m.yaml", "out_dir: x\nsample: &s {temperature: 0.5, top_p: 0.9}\n"
                "revise:\n  <<: *s\n  temperature: 0.3\n")
    got = load_config(cfg)
    assert (got.revise.temperature, got.revise.top_p, got.sample.temperature) == (0.3, 0.9, 0.5)
    harmless = (REPO / "constitutions" / "harmless.yaml").read_text()
    merged = harmless.replace("principles:\n", "x-shared: &tags {weight: 1}\nprinciples:\n", 1)
    merged = merged.replace("  - id: ", "  - <<: *tags\n    id: ", 1)
    # the anchor's key is unknown to a constitution: the one problem reported is that, not a repeated key
    problems = main(["constitution", "validate", write(tmp_path / "c.yaml", merged)])
    out = capsys.readouterr().out
    assert problems == 1 and "appears twice" not in out and "x-shared" in out, out


def test_a_folder_as_the_config_or_the_prompt_file(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    one_line(capsys, cai(tmp_path, config=str(tmp_path / "folder")), "folder", "is a folder")
    one_line(capsys, cai(tmp_path, f"prompts.path={tmp_path / 'folder'}"), "prompts.path", "is a folder")
    code = main(["constitution", "validate", str(tmp_path / "folder")])
    assert code == 1 and "is a folder" in capsys.readouterr().out


def test_an_empty_stop_override_is_refused(tmp_path, capsys):
    """`sample.stop=$UNSET` in a shell: an empty stop string would end every response at once."""
    one_line(capsys, cai(tmp_path, "sample.stop="), "override 'sample.stop='", "empty stop string", "sample.stop=[]")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["seed=-1", f"seed={2**32}", "train.seed=-1", f"train.seed={2**32}"])
def test_a_seed_numpy_cannot_take_is_refused_at_once(tmp_path, capsys, override):
    key = override.split("=")[0]
    one_line(capsys, cai(tmp_path, override), f"override '{override}'", f"{key}:")


def test_an_override_key_given_twice(tmp_path, capsys):
    code = main(["run", CONFIG, f"out_dir={tmp_path / 'run'}", "seed=1", "seed=2"])
    one_line(capsys, code, "override 'seed=2'", "'seed' is already given ('seed=1')")
    assert not (tmp_path / "run").exists()


def test_an_override_error_names_the_override_not_the_file(tmp_path, capsys):
    line = one_line(capsys, cai(tmp_path, "sample.n=two"), "override 'sample.n=two'", "sample.n")
    assert "demo.yaml" not in line
    cfg = write(tmp_path / "c.yaml", "out_dir: x\nsample:\n  n: two\n")
    one_line(capsys, cai(tmp_path, config=cfg), "c.yaml", "sample.n")  # from the file: the file is named


@pytest.mark.parametrize("key", ["audit.model_url", "audit.baseline_url", "audit.judge.url", "engine.base_url"])
def test_a_server_url_that_is_not_one_is_refused_at_validation(tmp_path, capsys, key):
    one_line(capsys, cai(tmp_path, f"{key}=notaurl"), key, "not a server URL")


def test_audit_server_errors_name_the_audit_setting(tmp_path, capsys):
    from cai_pipeline.config import load_config
    from cai_pipeline.executors.local import Engines

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(CONFIG, [f"out_dir={tmp_path}", "engine.timeout_s=2"])
    with pytest.raises(UserError) as e:
        Engines(cfg).open("audit-model", "served", f"http://127.0.0.1:{port}/v1", "audit.model_url")
    assert str(e.value).startswith("audit.model_url: cannot reach") and "engine.base_url" not in str(e.value)


def test_iterate_and_run_folders_are_kept_apart(tmp_path, capsys, echo):
    assert cai(tmp_path) == 0
    capsys.readouterr()
    one_line(capsys, main(["iterate", CONFIG, f"out_dir={tmp_path / 'run'}", *BASE]), "made by `cai run`",
             "another out_dir")
    (tmp_path / "it").mkdir()
    write(tmp_path / "it" / "manifest.json", json.dumps({"package": "cai-pipeline", "kind": "iterate", "stages": {}}))
    one_line(capsys, main(["run", CONFIG, f"out_dir={tmp_path / 'it'}", *BASE]), "made by `cai iterate`",
             "continue it with `cai iterate`")
    assert sorted(p.name for p in (tmp_path / "it").iterdir()) == ["manifest.json"]


def test_a_truncated_gzip_prompt_file(tmp_path, capsys):
    import gzip

    whole = gzip.compress(b"".join(json.dumps({"prompt": f"q{i}"}).encode() + b"\n" for i in range(50)))
    path = write(tmp_path / "p.jsonl.gz", whole[: len(whole) // 2])
    one_line(capsys, cai(tmp_path, f"prompts.path={path}"), "p.jsonl.gz", "truncated", "download it again")


def test_a_lone_surrogate_in_a_prompt_is_a_reject(tmp_path, echo):
    path = write(tmp_path / "p.jsonl", '{"prompt": "broken \\ud800 escape"}\n{"prompt": "fine"}\n')
    assert cai(tmp_path, f"prompts.path={path}") == 0
    [reject] = rows(tmp_path / "run" / "rejects" / "prompts")
    assert reject["reason"] == "invalid_text" and "\\ud800" in reject["row"]
    assert samples_and_empty(tmp_path) == 2


def test_empty_messages_with_a_system_prompt_is_a_reject(tmp_path, echo):
    path = jsonl(tmp_path / "p.jsonl", [{"messages": []}, {"prompt": "fine"}])
    assert cai(tmp_path, f"prompts.path={path}", "prompts.system_prompt=Be brief.") == 0
    assert [r["reason"] for r in rows(tmp_path / "run" / "rejects" / "prompts")] == ["empty_prompt"]


def test_a_row_with_both_prompt_and_messages_is_a_reject(tmp_path, echo):
    both = {"prompt": "one", "messages": [{"role": "user", "content": "another"}]}
    path = jsonl(tmp_path / "p.jsonl", [both, {"prompt": "fine"}])
    assert cai(tmp_path, f"prompts.path={path}") == 0
    [reject] = rows(tmp_path / "run" / "rejects" / "prompts")
    assert reject["reason"] == "prompt_and_messages" and "keep one" in reject["detail"]


def test_a_line_separator_inside_a_prompt_does_not_split_the_row(tmp_path, echo):
    """U+2028, U+2029 and U+0085 are line ends to str.splitlines(), not to JSON Lines; json.dumps leaves them raw
    with ensure_ascii=False."""
    text = "first\u2028second\u2029third\x85fourth"
    path = write(tmp_path / "p.jsonl", json.dumps({"prompt": text}, ensure_ascii=False) + "\n")
    assert cai(tmp_path, f"prompts.path={path}") == 0
    assert {r["prompt"][-1]["content"] for r in rows(tmp_path / "run" / "sample")} == {text}


def test_constitution_import_of_a_text_with_template_syntax(tmp_path, capsys):
    recipe = write(tmp_path / "r.json", json.dumps({"constitutions": [{"critic": "Is it {{ bad }}?",
                                                                       "revision": "Rewrite it."}]}))
    code = main(["constitution", "import", "--format", "hf-recipe", recipe, "-o", str(tmp_path / "c.yaml")])
    one_line(capsys, code, "r.json: cannot import", "template variable 'bad'")
    assert not (tmp_path / "c.yaml").exists()


def test_a_truncated_safetensors_file_is_named_before_the_run(tmp_path, capsys, model_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for f in Path(model_path).iterdir():
        if f.name != "model.safetensors":
            (folder / f.name).symlink_to(f)
    with open(Path(model_path) / "model.safetensors", "rb") as f:
        write(folder / "model.safetensors", f.read(2_000_000))  # the header and a little of the weights
    for key in ("model", "judge.model", "train.model"):
        one_line(capsys, cai(tmp_path, f"{key}={folder}", "stages=[sample,judge,train]"), key,
                 "truncated weight file model.safetensors")
    assert not (tmp_path / "run").exists()
    write(folder / "model.safetensors", b"\x07")
    one_line(capsys, cai(tmp_path, f"model={folder}"), "damaged weight file model.safetensors")


def test_a_lone_surrogate_escape_in_yaml_is_one_line(tmp_path, capsys):
    """Found by the fuzz suite: "\\ud800" in a double-quoted YAML string is half a character; pydantic's raw
    error escaped `cai constitution validate`."""
    cfg = write(tmp_path / "c.yaml", 'out_dir: x\nprompts:\n  system_prompt: "be \\ud800 kind"\n')
    one_line(capsys, cai(tmp_path, config=cfg), "c.yaml:3", "lone surrogate")
    path = write(tmp_path / "k.yaml", (REPO / "constitutions" / "harmless.yaml").read_text() + '"\\ud800": 1\n')
    assert main(["constitution", "validate", path]) == 1
    assert "lone surrogate" in capsys.readouterr().out


def test_a_name_with_a_line_break_keeps_the_message_one_line(tmp_path, capsys):
    """Found by the fuzz suite: a YAML key or a templates folder holding "\\n" split the error over lines."""
    path = write(tmp_path / "c.yaml", (REPO / "constitutions" / "harmless.yaml").read_text()
                 + '"odd\\nkey": 1\ntemplates: "a\\nb"\n')
    assert main(["constitution", "validate", path]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and "'odd\\nkey': unknown key" in out[0] and "'a\\nb' not found" in out[1], out
    one_line(capsys, main(["run", CONFIG, f"out_dir={tmp_path}", "sample.n\n=1"]), "override 'sample.n\\n=1'",
             "unknown key 'sample.n\\n'")
