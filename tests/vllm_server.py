"""A real OpenAI-compatible server for tests: vLLM's api_server with the embedded model on 127.0.0.1.

One server per test process, started on first use and stopped at exit (several test modules share it). It
takes 20–60 s to start on two cores, so everything that needs it asks `shared_server()`.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVED_NAME = "smol"
KEY_ENV = "CAI_TEST_OPENAI_KEY"


@dataclass
class Server:
    url: str  # the API root, http://127.0.0.1:PORT/v1
    key: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group: the engine core goes too
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, key: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"vLLM server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def start_server(model_path: str, *, timeout: float = 300) -> Server:
    from cai_pipeline.engines.vllm import cpu_environment

    port, key = free_port(), f"sk-test-{secrets.token_hex(12)}"
    env = {**os.environ, **cpu_environment(1)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs its engine core in a process of its own
    log = Path(tempfile.mkdtemp(prefix="cai-vllm-server-")) / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--dtype", "bfloat16", "--max-model-len", "2048", "--api-key", key, "--disable-uvicorn-access-log",
           # the same fp32 output head as our offline engine (EngineConfig.fp32_head), so log-probs match
           "--hf-overrides", '{"head_dtype": "float32"}']
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}/v1", key, proc, log)
    try:
        wait_ready(server.url, key, proc, log, timeout)
    except BaseException:
        server.stop()
        raise
    return server


_SHARED: Server | None = None


def shared_server(model_path: str) -> Server:
    """The process's one server, started on first call and stopped at exit."""
    global _SHARED
    if _SHARED is None or _SHARED.proc.poll() is not None:
        _SHARED = start_server(model_path)
        atexit.register(_SHARED.stop)
    return _SHARED
