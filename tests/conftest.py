"""Shared fixtures. Real-model fixtures start each engine once per session; under CI=true a missing vLLM or
embedded model fails the suite instead of skipping it, so CI can never go green without the real model."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def later_wins(*args: str) -> list[str]:
    """Command-line words with a later `key=value` replacing an earlier one with the same key, in its place.
    The CLI refuses a key given twice; test helpers lay each case's overrides over their own defaults."""
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        key = arg.partition("=")[0] if "=" in arg and not arg.startswith("-") else f"\0{i}"
        out[key] = arg
    return list(out.values())


def missing(reason: str):
    """Skip locally, fail in CI: a real-model test must never be skipped silently there."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def one_line(capsys, code: int, *needles: str) -> str:
    """Exit 2 and exactly one line on stderr, `error: ...`, that names what is wrong (the user-error contract)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model_path() -> str:
    from cai_pipeline.errors import UserError
    from cai_pipeline.models import resolve_model

    try:
        return resolve_model("embedded")
    except UserError as e:
        missing(f"the embedded model is unavailable: {e}")


@pytest.fixture(scope="session")
def hf_engine(model_path):
    from cai_pipeline.engines import make_engine

    engine = make_engine(kind="hf", model=model_path, batch_size=16)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_engine(model_path):
    if importlib.util.find_spec("vllm") is None:
        missing("vLLM is not installed (pip install 'cai-pipeline[cpu]')")
    from cai_pipeline.console import quiet_libraries
    from cai_pipeline.engines import make_engine

    quiet_libraries()
    engine = make_engine(kind="vllm", model=model_path, seed=0)
    yield engine
    engine.close()


class Borrowed:
    """The session's engine lent to code that closes what it builds (the CLI): close() only gives it back. A
    vLLM engine built and closed in this process would tear down vLLM's process-wide state (its parallel
    groups) under the session's engine, and every later vLLM test would fail."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def close(self):
        pass


@pytest.fixture
def lent_vllm(vllm_engine, monkeypatch):
    """Every engine the CLI builds in this test is the session's vLLM engine."""
    import cai_pipeline.engines

    monkeypatch.setattr(cai_pipeline.engines, "make_engine", lambda *a, **k: Borrowed(vllm_engine))
    return vllm_engine


@pytest.fixture(params=["vllm", "hf"])
def engine(request):
    """Both real engines, one after the other."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture
def run_config(tmp_path):
    """A small real run config writing into tmp_path; tests override what they need."""
    from cai_pipeline.config import load_config

    def make(*overrides: str):
        return load_config(REPO / "configs" / "demo.yaml", later_wins(
                           f"out_dir={tmp_path / 'run'}", "prompts.limit=4", "sample.max_tokens=24",
                           "revise.max_tokens=24", "revise.rounds=2", "stages=[sample,revise,pairs,export]",
                           *overrides))

    return make


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    """A finished stand-in run (tests/report_run.py) for the report's tests, made once per session."""
    from tests.report_run import make_run, off_the_loop

    out = tmp_path_factory.mktemp("report") / "run"
    off_the_loop(make_run, out)
    return out
