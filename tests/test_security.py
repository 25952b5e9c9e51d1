"""Security: the API key never reaches the run folder, logs or messages; trust_remote_code is off unless the
config turns it on (and then warns); weights load from safetensors only; templates render in the sandbox."""

from __future__ import annotations

import logging
import shutil
import warnings

import pytest
from jinja2.sandbox import SandboxedEnvironment

import cai_pipeline.engines.hf as hf
import cai_pipeline.engines.vllm as vllm_engine
from cai_pipeline.cli import main
from cai_pipeline.engines import make_engine
from cai_pipeline.errors import UserError
from cai_pipeline.templates import TemplateSet
from tests.conftest import REPO
from tests.fault_proxy import STUB_MODEL, FaultProxy

CONFIG = str(REPO / "configs" / "demo.yaml")
SECRET = "sk-live-7f3c9a1e5b2d4c6f8a0b1c2d3e4f5a6b"
SMALL = ["prompts.limit=2", "shard_size=1", "sample.max_tokens=8", "revise.max_tokens=8", "revise.rounds=1",
         "revise.few_shot=0", "stages=[sample,revise,pairs,export]"]


def leaks(folder, secret: str) -> list[str]:
    """Files under `folder` holding the secret anywhere in their bytes (Parquet included)."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_the_api_key_is_never_written_or_logged(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("CAI_TEST_SECRET_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # everything the openai client and httpx would log
    out = tmp_path / "run"
    with FaultProxy(None, require_key=SECRET, error=0.3, seed=2) as stub:
        code = main(["run", CONFIG, f"out_dir={out}", *SMALL, "engine.kind=openai", f"engine.base_url={stub.url}",
                     "engine.api_key_env=CAI_TEST_SECRET_KEY", f"engine.served_model={STUB_MODEL}"])
    assert code == 0 and stub.seen_auth == {f"Bearer {SECRET}"}  # the key was used, on every request
    assert not leaks(out, SECRET)
    captured = capfd.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    assert (out / "datasets" / "README.md").exists() and "CAI_TEST_SECRET_KEY" in (out / "manifest.json").read_text()


def test_a_refused_key_is_not_repeated_in_the_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAI_TEST_SECRET_KEY", SECRET)
    with FaultProxy(None, require_key="sk-the-right-one") as stub:
        code = main(["run", CONFIG, f"out_dir={tmp_path / 'run'}", *SMALL, "engine.kind=openai",
                     f"engine.base_url={stub.url}", "engine.api_key_env=CAI_TEST_SECRET_KEY"])
    err = capsys.readouterr().err
    assert code == 2 and "refused the API key" in err and "CAI_TEST_SECRET_KEY" in err
    assert SECRET not in err and SECRET[:12] not in err
    assert not leaks(tmp_path, SECRET)


class Recorder:
    """Stands in for an engine class: records how it was built."""

    calls: list[dict] = []

    def __init__(self, path, **kwargs):
        Recorder.calls.append(kwargs)


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_trust_remote_code_is_off_unless_asked_and_warns_when_on(kind, model_path, monkeypatch):
    monkeypatch.setattr(hf if kind == "hf" else vllm_engine, "HFEngine" if kind == "hf" else "VLLMEngine", Recorder)
    Recorder.calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default must not warn
        make_engine(kind=kind, model=model_path)
    with pytest.warns(UserWarning, match="trust_remote_code is on"):
        make_engine(kind=kind, model=model_path, trust_remote_code=True)
    assert [c["trust_remote_code"] for c in Recorder.calls] == [False, True]


@pytest.mark.parametrize("kind", ["hf", "vllm"])
def test_a_model_folder_with_only_pickled_weights_is_refused(kind, model_path, tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{model_path}/{name}", folder / name)
    (folder / "pytorch_model.bin").write_bytes(b"a pickle could run code on load")
    code = main(["run", CONFIG, f"out_dir={tmp_path / 'run'}", *SMALL, f"model={folder}", f"engine.kind={kind}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no .safetensors weights (pytorch_model.bin)" in err


def test_templates_render_in_the_sandbox(tmp_path):
    assert isinstance(TemplateSet().env, SandboxedEnvironment)
    shutil.copytree(REPO / "prompts", tmp_path / "tpl")
    (tmp_path / "tpl" / "critique.j2").write_text("{{ principle | attr('__init__') }}")
    with pytest.raises(UserError, match="refused"):
        TemplateSet(tmp_path / "tpl").render("critique", principle=object())
