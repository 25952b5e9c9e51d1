"""Batch mode for hosted APIs (`engine.batch: true` with `engine.kind: openai`): a stage's requests go as one
job of the OpenAI Batch API instead of one HTTP request each — half the price on hosted APIs and far higher
limits, results within the completion window (hours, not seconds).

Each `generate` / `choice_logprobs` call becomes one batch:

    the requests as JSONL (one line per conversation, custom_id = its position) → POST /v1/files (purpose
    "batch") → POST /v1/batches → GET /v1/batches/{id} every `engine.batch_poll_s` → the output and error files
    → one Completion (or log-probs) per conversation, in order

The state of every batch — its file id, batch id and status — is written to `<out_dir>/batches/<key>.json` at
each step, where key is the hash of the JSONL. A killed run computes the same requests again (every seed is
keyed by shard and step), finds the state and carries on from where it stopped: it polls the batch it created,
or — killed after the upload — looks for a batch made from its file (the request may have reached the server
before the kill) and creates one only where there is none; it never uploads or pays twice. A line the server failed comes
back as an error with the server's reason, so its row goes to rejects; the lines that succeeded are kept, also
in an expired or cancelled batch (which keeps the results of the lines it finished).

Engines without continuous batching run a revise chain round by round: here each critique or revision step of
a shard is one batch. The judge's log-probs are read from `top_logprobs`, as for a hosted API without batches.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from cai_pipeline.engines.base import Completion, Failure, GenParams, Message, error_completion
from cai_pipeline.engines.openai import (
    TOP_LOGPROBS,
    Malformed,
    OpenAIEngine,
    describe,
    parse_chat,
    parse_top_logprobs,
    pick_choices,
)
from cai_pipeline.store import atomic_write_json

ENDPOINT = "/v1/chat/completions"
DONE = ("completed", "failed", "expired", "cancelled")


class BatchState(BaseModel):
    """**`batches/<key>.json`**: where one batch stands; written after each step."""

    model_config = ConfigDict(extra="forbid")
    key: str
    requests: int
    file_id: str | None = None
    batch_id: str | None = None
    status: str = "new"
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = []


class BatchEngine:
    """The openai engine's requests, sent as batches. Builds bodies and reads answers as the openai engine does."""

    name = "openai"

    def __init__(self, engine: OpenAIEngine, state_dir: Path, *, poll_s: float = 30, window: str = "24h"):
        import openai

        self.inner, self.state_dir, self.poll_s, self.window = engine, Path(state_dir), poll_s, window
        self.model, self.stats, self.max_model_len = engine.model, engine.stats, engine.max_model_len
        self.client = openai.OpenAI(base_url=engine.root, api_key=engine._client.api_key, max_retries=engine.max_retries)

    # -- the protocol --------------------------------------------------------------------------------------
    def generate(self, convs: list[list[Message]], params: GenParams) -> list[list[Completion]]:
        early: dict[int, Completion] = {}
        bodies: dict[int, dict] = {}
        for i, conv in enumerate(convs):
            failure = self.inner._injected(conv) or self.inner._fits(conv)[1]
            if failure:
                early[i] = error_completion(failure)
                continue
            body, extra = self.inner._chat_body(conv, params, self.inner._fits(conv)[0])
            bodies[i] = {**body, **extra}
        answers = self.run_batch(bodies)
        out = []
        for i in range(len(convs)):
            if i in early:
                out.append([early[i]])
                continue
            answer = answers[i]
            if isinstance(answer, Failure):
                out.append([error_completion(answer)])
                continue
            try:
                texts, usage = parse_chat(answer, bodies[i]["n"])
            except Malformed as e:
                out.append([error_completion(self._error("batch_line_failed", f"malformed response: {e}"))])
                continue
            out.append(self.inner._completions(texts, usage, params.n))
        return out

    def choice_logprobs(self, convs: list[list[Message]], choices: list[str]) -> list[dict[str, float] | str]:
        bodies = {i: {"model": self.inner.info.model, "messages": [dict(m) for m in conv], "max_tokens": 1,
                      "temperature": 0, "logprobs": True, "top_logprobs": TOP_LOGPROBS, **self.inner._prefix_extra(conv)}
                  for i, conv in enumerate(convs)}
        answers = self.run_batch(bodies)
        out: list[dict[str, float] | str] = []
        for i in range(len(convs)):
            answer = answers[i]
            if isinstance(answer, Failure):
                out.append(answer)
                continue
            try:
                picked = pick_choices(parse_top_logprobs(answer), choices)
            except Malformed as e:
                out.append(self._error("batch_line_failed", f"malformed response: {e}"))
                continue
            out.append(picked or self._error("no_choice_in_top_logprobs",
                                             f"none of {choices} among the server's top {TOP_LOGPROBS} tokens"))
        return out

    def count_tokens(self, conv: list[Message]) -> int:
        return self.inner.count_tokens(conv)

    def close(self) -> None:
        self.client.close()
        self.inner.close()

    # -- one batch -----------------------------------------------------------------------------------------
    def run_batch(self, bodies: dict[int, dict]) -> dict[int, dict | Failure]:
        """Each body's answer (the response body) or its failure, by position; resumes a batch already sent."""
        if not bodies:
            return {}
        lines = [json.dumps({"custom_id": str(i), "method": "POST", "url": ENDPOINT, "body": body}, sort_keys=True)
                 for i, body in sorted(bodies.items())]
        data = ("\n".join(lines) + "\n").encode()
        key = hashlib.sha256(data).hexdigest()[:24]
        state = self._load(key) or BatchState(key=key, requests=len(lines))
        try:
            state = self._advance(state, data)
        except Exception as e:
            import openai

            if not isinstance(e, openai.APIError):
                raise
            failure = self._error("batch_error", self.inner._scrub(describe(e)))
            return dict.fromkeys(bodies, failure)
        return self._results(state, bodies)

    def _advance(self, state: BatchState, data: bytes) -> BatchState:
        if state.file_id is None:
            uploaded = self.client.files.create(file=(f"cai-{state.key}.jsonl", data), purpose="batch")
            state.file_id, state.status = uploaded.id, "uploaded"
            self._save(state)
        if state.batch_id is None and state.status == "uploaded":  # killed after asking? the batch may exist
            state.batch_id = self._created_from(state.file_id)
        if state.batch_id is None:
            batch = self.client.batches.create(input_file_id=state.file_id, endpoint=ENDPOINT,
                                               completion_window=self.window)
            state.batch_id, state.status = batch.id, batch.status
            self._save(state)
        while state.status not in DONE:
            time.sleep(self.poll_s)
            batch = self.client.batches.retrieve(state.batch_id)
            state.status = batch.status
            state.output_file_id, state.error_file_id = batch.output_file_id, batch.error_file_id
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            state.errors = [f"{getattr(e, 'code', '')}: {getattr(e, 'message', '')}" for e in errors]
            self._save(state)
        return state

    def _created_from(self, file_id: str) -> str | None:
        """The batch already made from our uploaded file, if any: a run killed after it asked for the batch but
        before it saved the answer finds the batch here instead of paying for a second one."""
        for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == file_id:
                return batch.id
        return None

    def _results(self, state: BatchState, bodies: dict[int, dict]) -> dict[int, dict | Failure]:
        found: dict[int, dict | Failure] = {}
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id:
                for line in self.client.files.content(file_id).text.splitlines():
                    if line.strip():
                        self._read_line(json.loads(line), found)
        if state.status == "failed":
            why = "; ".join(state.errors) or "the server gave no reason"
            missing = ("batch_failed", f"batch {state.batch_id} failed: {self.inner._scrub(why)}")
        else:
            missing = (f"batch_{state.status}", f"batch {state.batch_id} ended {state.status} before this request ran")
        return {i: found[i] if i in found else self._error(*missing) for i in bodies}

    def _read_line(self, line: dict, found: dict) -> None:
        """One line of an output or error file: the response body, or the server's reason it failed."""
        i = int(line["custom_id"])
        response, error = line.get("response") or {}, line.get("error")
        body = response.get("body") if isinstance(response, dict) else None
        if not error and response.get("status_code") == 200 and isinstance(body, dict):
            found[i] = body
            return
        if not error and isinstance(body, dict):
            error = body.get("error")
        if isinstance(error, dict):
            error = f"{error.get('code') or response.get('status_code', '')}: {error.get('message', '')}"
        found[i] = self._error("batch_line_failed", self.inner._scrub(str(error or "no reason given")))

    def _error(self, reason: str, detail: str) -> Failure:
        return self.inner._error(reason, detail)

    def _path(self, key: str) -> Path:
        return self.state_dir / f"{key}.json"

    def _load(self, key: str) -> BatchState | None:
        path = self._path(key)
        return BatchState.model_validate_json(path.read_text()) if path.exists() else None

    def _save(self, state: BatchState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self._path(state.key), state.model_dump())
