"""A tiny OpenAI Batch API on loopback, for testing engine.batch (cai_pipeline/engines/openai_batch.py).

It serves GET /v1/models, POST /v1/files (multipart, purpose "batch"), POST and GET /v1/batches (create, list),
GET /v1/batches/{id} and GET /v1/files/{id}/content. A batch is in progress for `polls` status checks, then `completed` — or, with
`outcome="expired"`, `expired` with only the first half of its lines answered (the Batch API keeps what it
finished). Each line is answered as a chat completion: text generation (a reply naming the conversation), or,
when it asks for `top_logprobs`, log-probs of A and B from the planted judge `longer` (tests/planted_judge.py:
P(A) grows with how many more words (A) has than (B)). A line whose messages hold `FAIL-ME`
fails with HTTP 400 and a reason, in the error file, as the API reports a failed request.

It also answers POST /v1/chat/completions directly, as any server: the openai engine without batch mode. It
counts GET /v1/models (`probes`): every openai engine built probes it once, so that is how many engines — on
a model server, model loads — a run made.

`hold_create` / `hold_batches` keep POST /v1/batches waiting, or every batch in progress, until cleared: a
test kills its client there.
"""

from __future__ import annotations

import email.parser
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.planted_judge import _RESPONSES, longer

MODEL = "batchy"
JUDGE = "other-judge"  # served too: a run whose judge is another model
FAIL = "FAIL-ME"


class BatchServer:
    def __init__(self, polls: int = 1, outcome: str = "completed"):
        self.polls, self.outcome = polls, outcome
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.uploads: list[bytes] = []  # every upload's content, in order
        self.probes = 0  # GET /v1/models: one per engine built
        self.hold_create = threading.Event()
        self.hold_batches = threading.Event()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> BatchServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.hold_create.clear()
        self.hold_batches.clear()
        self.server.shutdown()
        self.server.server_close()

    # -- the API ---------------------------------------------------------------------------------------------
    def upload(self, content: bytes) -> dict:
        with self.lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = content
            self.uploads.append(content)
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": "input.jsonl", "purpose": "batch", "status": "processed"}

    def create(self, body: dict) -> dict:
        while self.hold_create.is_set():
            time.sleep(0.05)
        with self.lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "endpoint": body["endpoint"],
                                      "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                                      "status": "in_progress", "created_at": int(time.time()), "output_file_id": None,
                                      "error_file_id": None, "errors": None, "polls": 0}
        return self._public(self.batches[batch_id])

    def retrieve(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        with self.lock:
            batch["polls"] += 1
            if batch["status"] == "in_progress" and batch["polls"] >= self.polls and not self.hold_batches.is_set():
                self._finish(batch)
        return self._public(batch)

    def _finish(self, batch: dict) -> None:
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]].decode().splitlines() if x.strip()]
        if self.outcome == "expired":
            lines = lines[: len(lines) // 2]
        good, bad = [], []
        for line in lines:
            out = self.answer(line)
            (bad if out["response"]["status_code"] != 200 else good).append(json.dumps(out))
        for kind, rows in (("output_file_id", good), ("error_file_id", bad)):
            if rows:
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = ("\n".join(rows) + "\n").encode()
                batch[kind] = file_id
        batch["status"] = self.outcome

    @staticmethod
    def _public(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if k != "polls"}

    def answer(self, line: dict) -> dict:
        body = line["body"]
        texts = [m["content"] for m in body["messages"]]
        if any(FAIL in t for t in texts):
            response = {"status_code": 400, "body": {"error": {"code": "invalid_prompt",
                                                               "message": "the prompt was flagged by the fake server"}}}
        elif body.get("top_logprobs"):
            a, b = _RESPONSES.search(texts[0]).groups()
            p = min(max(longer(a, b), 1e-9), 1 - 1e-9)
            top = [{"token": "A", "logprob": math.log(p)}, {"token": "B", "logprob": math.log(1 - p)}]
            choice = {"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "length",
                      "logprobs": {"content": [{"token": "A", "logprob": top[0]["logprob"], "top_logprobs": top}]}}
            response = {"status_code": 200, "body": {"choices": [choice], "usage": {"completion_tokens": 1}}}
        else:
            last = re.sub(r"\s+", " ", texts[-1])[:30]
            choices = [{"index": k, "message": {"role": "assistant", "content": f"reply {len(texts)} {k} {last}"},
                        "finish_reason": "stop"} for k in range(body.get("n", 1))]
            response = {"status_code": 200, "body": {"choices": choices, "usage": {"completion_tokens": 5 * len(choices)}}}
        return {"id": f"req-{line['custom_id']}", "custom_id": line["custom_id"], "response": response, "error": None}

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _handler(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/models"):
                    with api.lock:
                        api.probes += 1
                    return self._reply({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fake"}
                                                                   for m in (MODEL, JUDGE)]})
                found = re.fullmatch(r"/v1/files/([^/]+)/content", self.path)
                if found:
                    return self._reply(api.files[found.group(1)], raw=True)
                if self.path.split("?")[0] == "/v1/batches":
                    listed = [api._public(b) for b in reversed(api.batches.values())]
                    return self._reply({"object": "list", "data": listed, "has_more": False})
                found = re.fullmatch(r"/v1/batches/([^/]+)", self.path)
                if found and found.group(1) in api.batches:
                    return self._reply(api.retrieve(found.group(1)))
                self._reply({"error": {"message": "not found"}}, status=404)

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/files":
                    return self._reply(api.upload(self._file(data)))
                if self.path == "/v1/batches":
                    return self._reply(api.create(json.loads(data)))
                if self.path == "/v1/chat/completions":
                    response = api.answer({"custom_id": "0", "body": json.loads(data)})["response"]
                    return self._reply(response["body"], status=response["status_code"])
                self._reply({"error": {"message": "not found"}}, status=404)

            def _file(self, data: bytes) -> bytes:
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = email.parser.BytesParser().parsebytes(head + data)
                part = next(p for p in message.get_payload() if p.get_param("name", header="content-disposition") == "file")
                return part.get_payload(decode=True)

            def _reply(self, obj, status: int = 200, raw: bool = False) -> None:
                payload = obj if raw else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except BrokenPipeError:  # a client the test killed
                    pass

        return Handler
