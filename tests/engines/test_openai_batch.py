"""engine.batch (cai_pipeline/engines/openai_batch.py) against a fake Batch API (tests/batch_server.py): a run
end to end, a failed line and an expired batch in rejects with the server's reason, partial results kept, and a
run killed between upload and results that resumes its batch instead of uploading again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from cai_pipeline.config import load_config
from tests.batch_server import FAIL, MODEL, BatchServer
from tests.conftest import REPO
from tests.planted_judge import longer

PROMPTS = ["How do I bake bread?", f"Tell me something {FAIL}", "What is a prime number?"]


def write_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def overrides(tmp_path, server, stages="[sample,revise,pairs,judge]"):
    return [f"out_dir={tmp_path / 'run'}", f"model={MODEL}", "engine.kind=openai", f"engine.base_url={server.url}",
            "engine.batch=true", "engine.batch_poll_s=0.02", f"prompts.path={write_prompts(tmp_path)}",
            f"stages={stages}", "sample.n=2", "revise.rounds=1", "revise.few_shot=0", "judge.principles=1",
            "judge.min_margin=0", "judge.drop_inconsistent=false"]


def run(tmp_path, server, **kw):
    from cai_pipeline.pipeline import run_pipeline

    cfg = load_config(REPO / "configs" / "demo.yaml", overrides(tmp_path, server, **kw))
    return run_pipeline(cfg, summary=False, report=False, warn=False)


def rejects(tmp_path, stage):
    folder = tmp_path / "run" / "rejects" / stage
    return [r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def states(tmp_path):
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "batches").glob("*.json"))]


def test_a_run_in_batches_end_to_end(tmp_path):
    with BatchServer() as server:
        manifest = run(tmp_path, server)
    st = manifest["stages"]
    assert st["sample"]["out"] == 4 and st["sample"]["rejected"] == {"batch_line_failed": 1}
    [failed] = rejects(tmp_path, "sample")
    assert "invalid_prompt: the prompt was flagged by the fake server" in failed["detail"]
    assert st["revise"]["out"] == 4 and st["judge"]["counts"]["scored"] == st["pairs"]["out"] > 0
    assert st["judge"]["out"] > 0  # sampled pairs of equal length are ties for a `longer` judge; the rest kept
    judged = pq.read_table(tmp_path / "run" / "judge" / "part-00000.parquet").to_pylist()
    for row in judged:  # the server's log-probs came back: a `longer` judge in both orders gives p_a = longer(a, b)
        assert row["p_a"] == pytest.approx(longer(row["a"], row["b"]), abs=1e-6)
    # one batch per engine call: sample, revise's critique and revision steps, the judge; each uploaded once
    assert len(server.uploads) == len(server.batches) == len(states(tmp_path)) == 4
    assert all(s["status"] == "completed" and s["batch_id"] for s in states(tmp_path))
    assert manifest["stages"]["sample"]["requests"] == 3 and manifest["stages"]["revise"]["requests"] == 8


def test_an_expired_batch_keeps_what_it_finished_and_rejects_the_rest(tmp_path):
    with BatchServer(outcome="expired") as server:
        manifest = run(tmp_path, server, stages="[sample]")
    # 3 lines, the first one answered: prompt 0's two samples kept, the other prompts rejected as expired
    assert manifest["stages"]["sample"]["out"] == 2
    assert manifest["stages"]["sample"]["rejected"] == {"batch_expired": 2}
    assert all("expired before this request ran" in r["detail"] for r in rejects(tmp_path, "sample"))


@pytest.mark.parametrize("where", ["after upload", "while the batch runs"])
def test_a_killed_run_resumes_its_batch_without_uploading_again(tmp_path, where):
    with BatchServer() as server:
        (server.hold_create if where == "after upload" else server.hold_batches).set()
        args = ["run", str(REPO / "configs" / "demo.yaml"), *overrides(tmp_path, server, stages="[sample]"),
                "--no-report"]
        proc = subprocess.Popen([sys.executable, "-m", "cai_pipeline.cli", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            field = "file_id" if where == "after upload" else "batch_id"  # saved: the point where we kill it

            def reached() -> bool:
                return any(s.get(field) for s in states(tmp_path))

            while not reached() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert reached(), proc.stderr.read().decode() if proc.poll() is not None else "timed out"
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        [state] = states(tmp_path)
        assert state["file_id"] and (state["batch_id"] is None) == (where == "after upload")
        server.hold_create.clear()  # a create request that reached the server before the kill now lands
        server.hold_batches.clear()
        time.sleep(0.2)
        manifest = run(tmp_path, server, stages="[sample]")
    assert len(server.uploads) == 1  # the batch was resumed, not sent (and paid) again
    assert len(server.batches) == 1
    assert manifest["stages"]["sample"]["out"] == 4


def test_batch_needs_the_openai_engine(tmp_path):
    from cai_pipeline.errors import UserError

    with pytest.raises(UserError, match="engine.batch needs engine.kind=openai"):
        load_config(REPO / "configs" / "demo.yaml", [f"out_dir={tmp_path}", "engine.batch=true"])
