"""A loopback HTTP proxy that injects faults in front of an OpenAI-compatible server, for tests.

For a set share of POST requests (seeded, so a run's fault pattern is reproducible given the request order)
it answers 500, answers 429 with Retry-After, drops the connection without an answer, or answers 200 with a
body that is not JSON; the rest go to the upstream server untouched. GET /v1/models always passes, so the
engine's start-up probe succeeds and the faults hit the work itself. With no upstream it is a stub server:
/v1/models lists one model and every request that is not faulted gets a short canned completion.

    with FaultProxy(upstream, error=0.1, rate_limit=0.1, drop=0.1, seed=0) as proxy:
        ... engine.base_url=proxy.url ...
        proxy.faults  # Counter: how many of each were injected
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("error", "rate_limit", "drop", "malformed")
STUB_MODEL = "stub-model"


class FaultProxy:
    def __init__(self, upstream: str | None = None, *, error: float = 0.0, rate_limit: float = 0.0,
                 drop: float = 0.0, malformed: float = 0.0, retry_after: float = 0, seed: int = 0,
                 require_key: str | None = None):
        self.upstream = urlsplit(upstream) if upstream else None
        self.rates = dict(zip(KINDS, (error, rate_limit, drop, malformed), strict=True))
        assert sum(self.rates.values()) <= 1.0, "fault shares add up to more than 1"
        self.retry_after = retry_after
        self.require_key = require_key  # stub only: answer 401 unless this bearer key comes
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.faults: Counter = Counter()
        self.forwarded = 0
        self.seen_auth: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def draw(self) -> str | None:
        """The fault for the next POST, or None to pass it on."""
        with self.lock:
            u, edge = self.rng.random(), 0.0
            for kind in KINDS:
                edge += self.rates[kind]
                if u < edge:
                    self.faults[kind] += 1
                    return kind
            self.forwarded += 1
            return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: pytest shows stderr of failing tests
                pass

            def do_GET(self) -> None:
                self._serve(fault=None)

            def do_POST(self) -> None:
                self._serve(fault=proxy.draw())

            def _serve(self, fault: str | None) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen_auth.add(self.headers.get("Authorization", ""))
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()  # no status line at all: the client sees a dropped connection
                    return
                if fault == "error":
                    return self._reply(500, b'{"error": {"message": "injected fault", "type": "server_error"}}')
                if fault == "rate_limit":
                    return self._reply(429, b'{"error": {"message": "slow down", "type": "rate_limit"}}',
                                       {"Retry-After": str(proxy.retry_after)})
                if fault == "malformed":
                    return self._reply(200, b'{"choices": [{"message": {"content": "trunc')
                if proxy.upstream is None:
                    return self._stub(body)
                self._forward(body)

            def _reply(self, status: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _forward(self, body: bytes) -> None:
                up = proxy.upstream
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                res = conn.getresponse()
                payload = res.read()
                conn.close()
                self._reply(res.status, payload)

            def _stub(self, body: bytes) -> None:
                if proxy.require_key and self.headers.get("Authorization") != f"Bearer {proxy.require_key}":
                    return self._reply(401, b'{"error": {"message": "Incorrect API key provided"}}')
                if self.command == "GET":
                    models = {"object": "list", "data": [{"id": STUB_MODEL, "object": "model", "owned_by": "stub"}]}
                    return self._reply(200, json.dumps(models).encode())
                n = json.loads(body or b"{}").get("n", 1)
                choices = [{"index": i, "message": {"role": "assistant", "content": f"stub answer {i}"},
                            "finish_reason": "stop"} for i in range(n)]
                usage = {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n}
                self._reply(200, json.dumps({"object": "chat.completion", "choices": choices, "usage": usage}).encode())

        return Handler
