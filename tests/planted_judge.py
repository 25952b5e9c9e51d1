"""A planted-bias judge: a tiny OpenAI-compatible server on loopback whose A/B answer is a known function of
the two responses in the judge's prompt, for testing the judge probes (cai_pipeline/judge_check/).

It answers what the openai engine asks a server without a local tokenizer (engines/openai.py `_top_choices`):
GET /v1/models, and POST /v1/chat/completions with `logprobs: true, top_logprobs: N, max_tokens: 1`, whose
answer is the first token's top log-probabilities. It reads responses (A) and (B) out of the judge's user turn
(prompts/judge.j2, the question-first layout) and gives P(A) = `prefer(a, b)`.

    with PlantedJudge(longer) as judge:
        ... engine.kind=openai engine.base_url=judge.url judge.model=planted ...
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "planted"
_RESPONSES = re.compile(r"\n\n\(A\) (.*)\n\n\(B\) (.*)\n\nAnswer with A or B only\.\Z", re.S)
_MARKDOWN = re.compile(r"^\s*(?:[-*+] |\d+\. |#{1,6} )|\*\*[^*]+\*\*", re.M)
SELF_MARK = "Indeed,"  # how the `self` judge recognises "its own" responses


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def longer(a: str, b: str) -> float:
    """Prefers the response with more words."""
    return _sigmoid((_words(a) - _words(b)) / 4)


def markdown(a: str, b: str) -> float:
    """Prefers the response with more markdown (list items, headers, bold)."""
    return _sigmoid(2 * (len(_MARKDOWN.findall(a)) - len(_MARKDOWN.findall(b))))


def first(a: str, b: str) -> float:
    """Prefers whatever is shown first."""
    return 0.8


def own(a: str, b: str) -> float:
    """Prefers the response that carries its own mark."""
    return _sigmoid(3 * ((SELF_MARK in a) - (SELF_MARK in b)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the engine opens up to 16 connections at once; the default backlog of 5 drops
    # some, and a dropped SYN is retried only after a second


class PlantedJudge:
    def __init__(self, prefer: Callable[[str, str], float]):
        self.prefer = prefer
        self.requests = 0
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> PlantedJudge:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: dict) -> dict:
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        found = _RESPONSES.search(user)
        assert found, f"not a judge prompt: {user[-200:]!r}"
        p = min(max(self.prefer(found.group(1), found.group(2)), 1e-9), 1 - 1e-9)
        top = [{"token": "A", "logprob": math.log(p)}, {"token": "B", "logprob": math.log(1 - p)}]
        choice = {"index": 0, "message": {"role": "assistant", "content": "A" if p >= 0.5 else "B"},
                  "logprobs": {"content": [{"token": "A", "logprob": top[0]["logprob"], "top_logprobs": top}]},
                  "finish_reason": "length"}
        return {"object": "chat.completion", "choices": [choice],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body in one send, without Nagle: else each answer waits out a delayed ACK (~40 ms).
            wbufsize = 1 << 16
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self._reply({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "planted"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with judge.lock:
                    judge.requests += 1
                self._reply(judge.answer(body))

            def _reply(self, obj: dict) -> None:
                payload = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
