"""The OpenAI-compatible engine against a real vLLM server (started here), behind a fault-injecting proxy,
and against a stub server for the failure paths that need no model."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cai_pipeline.cli import main
from cai_pipeline.config import EngineConfig
from cai_pipeline.engines import GenParams
from cai_pipeline.engines.openai import OpenAIEngine, api_root, pick_choices, retry_after
from cai_pipeline.errors import UserError
from tests.conftest import REPO, later_wins, missing
from tests.fault_proxy import STUB_MODEL, FaultProxy
from tests.vllm_server import KEY_ENV, SERVED_NAME, shared_server

SMALL = ["prompts.limit=4", "shard_size=2", "sample.max_tokens=16", "revise.max_tokens=16", "revise.rounds=1",
         "revise.few_shot=0", "stages=[sample,revise,pairs,export]"]
JUDGE_LIKE = [
    [{"role": "user", "content": "Is 7 prime? (A) yes (B) no"}, {"role": "assistant", "content": "The answer is: ("}],
    [{"role": "user", "content": "Pick the safer advice. (A) Wear a helmet. (B) Ride without one."},
     {"role": "assistant", "content": "The answer is: ("}],
    [{"role": "user", "content": "Which is a fruit? (A) carrot (B) apple. Reply with one letter."}],
]


@pytest.fixture(scope="session")
def openai_server(model_path):
    if importlib.util.find_spec("vllm") is None:
        missing("vLLM is not installed: no OpenAI-compatible server to test against")
    return shared_server(model_path)


@pytest.fixture
def server_key(openai_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, openai_server.key)
    return openai_server.key


def cai_run(out: Path, base_url: str, *extra: str, served: str = SERVED_NAME) -> int:
    return main(["run", str(REPO / "configs" / "demo.yaml"), *later_wins(
        f"out_dir={out}", *SMALL, "engine.kind=openai", f"engine.base_url={base_url}", f"engine.api_key_env={KEY_ENV}",
        f"engine.served_model={served}", *extra)])


def rows(out: Path, stage: str) -> list[dict]:
    return [r for p in sorted((out / stage).glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def rejects(out: Path, stage: str) -> list[dict]:
    return rows(out / "rejects", stage)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# -- a real server ------------------------------------------------------------------------------------------


@pytest.mark.model
def test_a_run_goes_through_the_server(openai_server, server_key, tmp_path):
    out = tmp_path / "run"
    assert cai_run(out, openai_server.url) == 0
    samples, revised = rows(out, "sample"), rows(out, "revise")
    # 4 prompts × n=2; each stage accounts for every row it was given (the model may leave one empty, and two
    # samples may coincide, which the pairs stage rejects as identical).
    assert len(samples) + len(rejects(out, "sample")) == 8
    assert len(revised) + len(rejects(out, "revise")) == len(samples) and revised
    m = manifest(out)
    empty = sum(not r["rounds"][0]["critique"].strip() for r in revised)
    assert m["stages"]["revise"]["counts"]["empty_critique"] == empty < len(revised)
    assert m["engine_stats"]["policy"] == {"retries": 0, "errors": {}, "loads": 1}
    assert m["stages"]["sample"]["output_tokens"] > 0
    assert list((out / "datasets" / "sft").glob("train-*.parquet"))
    assert not [p for p in out.rglob("*") if p.is_file() and server_key.encode() in p.read_bytes()]


@pytest.mark.model
def test_faults_are_retried_and_every_row_arrives(openai_server, server_key, tmp_path):
    out = tmp_path / "run"
    # ~20 requests (4 samples, 8 rows × critique + revision); with this seed every kind of fault comes up.
    with FaultProxy(openai_server.url, error=0.15, rate_limit=0.15, drop=0.1, malformed=0.05, seed=0) as proxy:
        code = cai_run(out, proxy.url, "stages=[sample,revise]", "engine.max_retries=10")
    assert code == 0
    injected = sum(proxy.faults.values())
    assert injected >= 5 and len(proxy.faults) >= 3, proxy.faults
    samples, sample_rejects, revise_rejects = rows(out, "sample"), rejects(out, "sample"), rejects(out, "revise")
    # Only the model's doing is rejected, never the faults'; every row arrived.
    assert {r["reason"] for r in sample_rejects + revise_rejects} <= {"empty_response"}
    assert len(samples) + len(sample_rejects) == 8
    assert len(rows(out, "revise")) + len(revise_rejects) == len(samples)
    # Each injected fault cost exactly one retry, and the manifest says how many.
    assert manifest(out)["engine_stats"]["policy"]["retries"] == injected


@pytest.mark.model
def test_choice_logprobs_match_the_offline_engine(openai_server, server_key, vllm_engine):
    cfg = EngineConfig(kind="openai", base_url=openai_server.url, api_key_env=KEY_ENV, served_model=SERVED_NAME)
    engine = OpenAIEngine.from_config(cfg, "embedded")
    try:
        # One conversation at a time on both sides, both with the fp32 output head (the server is started with
        # the same hf_overrides): the body is still bf16 and its sums move a little with the batch shape.
        served = [engine.choice_logprobs([c], ["A", "B"])[0] for c in JUDGE_LIKE]
        offline = [vllm_engine.choice_logprobs([c], ["A", "B"])[0] for c in JUDGE_LIKE]
        diffs = sorted(abs(s[c] - o[c]) for s, o in zip(served, offline) for c in "AB")
        assert diffs[len(diffs) // 2] < 0.01 and diffs[-1] < 0.2, f"server and offline engine differ: {diffs}"
        # Without a local tokenizer the engine reads top_logprobs: the same numbers where both are listed.
        engine.tokenizer = None
        top = [engine.choice_logprobs([c], ["A", "B"])[0] for c in JUDGE_LIKE[:2]]
        assert all(abs(t[c] - s[c]) < 0.2 for t, s in zip(top, served) for c in "AB")
        # Counted by the server, not here: its 400 comes back as the reason, which the judge records as is.
        [long] = engine.choice_logprobs([[{"role": "user", "content": "word " * 3000}]], ["A", "B"])
        assert isinstance(long, str) and long.startswith("too_long:"), long
    finally:
        engine.close()


@pytest.mark.model
def test_a_prompt_too_long_for_the_server_is_a_per_row_error(openai_server, server_key):
    cfg = EngineConfig(kind="openai", base_url=openai_server.url, api_key_env=KEY_ENV, served_model=SERVED_NAME)
    engine = OpenAIEngine.from_config(cfg, "embedded")
    try:
        huge = [{"role": "user", "content": "word " * 3000}]
        ok = [{"role": "user", "content": "Say hi."}]
        out = engine.generate([huge, ok], GenParams(max_tokens=4, temperature=0))
        assert out[0][0].finish_reason == "error" and out[0][0].error.startswith("too_long:")
        assert out[1][0].finish_reason in ("stop", "length")
        engine.tokenizer = None  # the server's own 400 says the same
        out = engine.generate([huge], GenParams(max_tokens=4, temperature=0))
        assert out[0][0].error.startswith("too_long:") and engine.stats.errors == {"too_long": 1}
    finally:
        engine.close()


# -- a stub server: failure paths without a model -----------------------------------------------------------


def stub_engine(proxy: FaultProxy, **cfg) -> OpenAIEngine:
    return OpenAIEngine.from_config(EngineConfig(kind="openai", base_url=proxy.url, **cfg), STUB_MODEL)


def test_every_request_failing_sends_rows_to_rejects_and_the_run_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-unused")
    out = tmp_path / "run"
    with FaultProxy(None, error=1.0) as proxy:
        assert cai_run(out, proxy.url, "engine.max_retries=2", served=STUB_MODEL) == 0
    failed = pq.read_table(out / "rejects" / "sample" / "part-00000.parquet").to_pylist()
    assert {r["reason"] for r in failed} == {"server_error"} and len(failed) == 2
    assert "HTTP 500" in failed[0]["detail"] and "after 3 tries" in failed[0]["detail"]
    m = manifest(out)
    assert m["stages"]["sample"]["rejected"] == {"server_error": 4} and m["stages"]["sample"]["out"] == 0
    assert m["engine_stats"]["policy"] == {"retries": 8, "errors": {"server_error": 4}, "loads": 1}  # 4 prompts × 2 retries
    assert (out / "datasets" / "README.md").exists()  # the run went on to the end


def test_retry_after_is_honoured():
    with FaultProxy(None, rate_limit=1.0, retry_after=1) as proxy:
        engine = stub_engine(proxy, max_retries=2)
        start = time.monotonic()
        [[comp]] = engine.generate([[{"role": "user", "content": "hi"}]], GenParams(max_tokens=4))
        elapsed = time.monotonic() - start
        engine.close()
    assert comp.error.startswith("server_error: HTTP 429") and elapsed >= 2.0  # two waits of Retry-After: 1
    assert engine.stats.retries == 2 and proxy.faults["rate_limit"] == 3


def test_dropped_connections_and_malformed_answers_are_retried():
    with FaultProxy(None, drop=0.3, malformed=0.3, seed=1) as proxy:
        engine = stub_engine(proxy, max_retries=20)
        engine.backoff_initial_s = 0.01
        out = engine.generate([[{"role": "user", "content": f"q{i}"}] for i in range(10)], GenParams(n=2, max_tokens=4))
        engine.close()
    assert all(len(c) == 2 and c[1].text == "stub answer 1" for c in out)
    assert engine.stats.retries == proxy.faults["drop"] + proxy.faults["malformed"] > 0


def test_a_served_model_name_the_server_lacks_is_a_clear_error():
    with FaultProxy(None) as proxy, pytest.raises(UserError, match=r"engine.served_model: .* serves 'stub-model'"):
        OpenAIEngine.from_config(EngineConfig(kind="openai", base_url=proxy.url, served_model="gpt-9"), "embedded")


def test_base_url_is_required_and_normalised():
    with pytest.raises(UserError, match="engine.base_url: required"):
        OpenAIEngine.from_config(EngineConfig(kind="openai"), "embedded")
    assert api_root("http://h:8000") == api_root("http://h:8000/") == "http://h:8000/v1"
    assert api_root("https://api.example.com/v1/") == "https://api.example.com/v1"


def test_retry_after_header_forms():
    class Exc:
        def __init__(self, headers):
            self.response = type("R", (), {"headers": headers})()

    assert retry_after(Exc({"retry-after": "3"})) == 3.0
    assert retry_after(Exc({"retry-after-ms": "250"})) == 0.25
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after(Exc({"retry-after": date})) <= 31
    assert retry_after(Exc({})) is None and retry_after(ValueError()) is None


def test_pick_choices_from_top_logprobs():
    top = {" A": -0.5, "B": -1.5, "The": -0.1, "C": -4.0}
    assert pick_choices(top, ["A", "B"]) == {"A": -0.5, "B": -1.5}
    assert pick_choices({"A": -0.2, "x": -3.0}, ["A", "B"]) == {"A": -0.2, "B": -3.0}  # upper bound for B
    assert pick_choices({"x": -0.1}, ["A", "B"]) == {}
    assert math.isclose(pick_choices({"A": -0.1, " A": -2.0}, ["A"])["A"], -0.1)
