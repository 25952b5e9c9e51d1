"""The OpenAI-compatible engine: any server that speaks /v1/chat/completions — vLLM's api_server, SGLang,
TGI, hosted APIs — with bounded concurrency and retries.

Retries live here and only here (the openai client's own are switched off). 429, 5xx, timeouts, dropped
connections and malformed answers are retried with exponential backoff and jitter, honouring Retry-After;
each retry is counted in `stats.retries`, which the manifest records. After the last try the conversation
comes back as an error Completion (`server_error: ...`), so its row goes to rejects with the reason and the
run goes on. Only an unreachable or refusing server at start is a UserError: then nothing could succeed.

Every request runs on one event loop in a thread the engine owns: one connection pool and one concurrency
limit, whichever loop the caller is on (run_chains starts a fresh loop for every shard).

The API key is read from the environment variable named in `engine.api_key_env` and held only by the HTTP
client; it is scrubbed from every message we make out of a server's answer.

`choice_logprobs` is exact on a vLLM server when the model's tokenizer is local (the embedded model or a
model folder): the prompt goes as the same token ids the offline engines build, once per choice with
`allowed_token_ids=[choice]` and `logprobs=0`; vLLM reports the raw model's log-probability of the token it
was made to pick, which is log P(choice | conversation), as the offline vLLM engine computes it. Elsewhere a
one-token chat completion with `top_logprobs=20` is read; a choice outside the top 20 gets the smallest
listed log-probability (an upper bound), and a conversation with neither choice listed gets `{}`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cai_pipeline.engines.base import (
    Completion,
    EngineStats,
    Failure,
    GenParams,
    Message,
    error_completion,
    too_long,
)
from cai_pipeline.engines.chat import (
    COMMON_CONTROL_STRINGS,
    choice_token_ids,
    control_strings,
    find_control_string,
    prompt_ids,
    split_prefix,
)
from cai_pipeline.errors import UserError

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # the most OpenAI's API (and vLLM's default --max-logprobs) returns
MAX_RETRY_AFTER_S = 120.0  # a server asking for longer than this is waited on this long, then asked again
_STATUS_PREFIX = re.compile(r"^Error code: \d+ - ")  # the openai client's, before the server's own message
_CONTEXT_MARKERS = ("maximum context length", "context length", "too many tokens", "prompt is too long")


class Malformed(Exception):
    """A 2xx answer we cannot read: not JSON, or JSON without the fields the API promises."""


@dataclass
class ServerInfo:
    model: str  # the name requests use
    owned_by: str  # "vllm" on a vLLM server: it accepts vLLM's extra parameters
    max_model_len: int | None  # vLLM reports it in /v1/models; other servers do not


def api_root(base_url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1` both mean the API root `http://host:8000/v1`."""
    url = base_url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


def read_api_key(env_name: str | None) -> str:
    if not env_name:
        return "EMPTY"  # local servers started without --api-key take any key; the client needs one
    key = os.environ.get(env_name)
    if key is None:
        raise UserError(f"engine.api_key_env: environment variable {env_name} is not set; export it, or unset "
                        "engine.api_key_env for a server without a key")
    if not key.strip():
        raise UserError(f"engine.api_key_env: environment variable {env_name} is set but empty; put the key in "
                        "it, or unset engine.api_key_env for a server without a key")
    return key


def probe(root: str, key: str, timeout: float, key_env: str | None = None) -> list[dict]:
    """GET /models once: an unreachable or refusing server is a clear error before any work starts."""
    import httpx

    try:
        res = httpx.get(f"{root}/models", headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
    except httpx.HTTPError as e:
        raise UserError(f"engine.base_url: cannot reach {root} ({type(e).__name__}); start the server or fix "
                        "engine.base_url") from None
    if res.status_code in (401, 403):
        where = f"${key_env}" if key_env else "engine.api_key_env (unset: no key was sent)"
        raise UserError(f"engine.api_key_env: {root} refused the API key (HTTP {res.status_code}); check the key "
                        f"in {where}")
    if res.status_code != 200:
        raise UserError(f"engine.base_url: {root}/models answered HTTP {res.status_code}; base_url must be the "
                        "API root of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    try:
        return [m for m in res.json()["data"] if isinstance(m, dict) and "id" in m]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"engine.base_url: {root}/models did not answer with an OpenAI model list; is this an "
                        "OpenAI-compatible server?") from None


def server_info(models: list[dict], wanted: str, root: str) -> ServerInfo:
    by_id = {m["id"]: m for m in models}
    if models and wanted not in by_id:
        served = ", ".join(repr(m) for m in list(by_id)[:5])
        raise UserError(f"engine.served_model: {root} serves {served}, not {wanted!r}; set "
                        f"engine.served_model to one of them")
    meta = by_id.get(wanted, {})
    length = meta.get("max_model_len")
    return ServerInfo(wanted, str(meta.get("owned_by", "")), length if isinstance(length, int) else None)


def local_tokenizer(model: str):
    """The model's tokenizer where it is on this machine (the embedded model, a model folder), else None:
    it gives exact token ids for the judge and length checks before a request is sent."""
    if model != "embedded" and not Path(model).expanduser().is_dir():
        return None
    try:
        from transformers import AutoTokenizer

        from cai_pipeline.models import resolve_model

        return AutoTokenizer.from_pretrained(resolve_model(model))
    except Exception as e:  # a folder without a tokenizer: the generic paths still work
        log.warning("no local tokenizer for %s (%s); judge scores use top_logprobs", model, type(e).__name__)
        return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds a 429/503 asked us to wait (Retry-After: seconds or an HTTP date; retry-after-ms), if any."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    if headers.get("retry-after-ms"):
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        date = email.utils.parsedate_to_datetime(value) if email.utils.parsedate_tz(value) else None
        return max(0.0, date.timestamp() - time.time()) if date else None


def is_transient(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 425, 429) or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError | Malformed)  # APITimeoutError is a connection error


def describe(exc: BaseException) -> str:
    import openai

    if isinstance(exc, openai.APIStatusError) and exc.status_code in (401, 403):
        return f"HTTP {exc.status_code}: the server refused the API key"  # its message may echo part of the key
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_STATUS_PREFIX.sub('', exc.message)}"
    if isinstance(exc, Malformed):
        return f"malformed response: {exc}"
    if isinstance(exc, openai.APITimeoutError):
        return "timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection failed ({type(cause).__name__ if cause else 'no detail'})"
    return f"{type(exc).__name__}: {exc}"


def _body_json(raw) -> dict:
    text = raw.text
    try:
        data = json.loads(text)
    except ValueError:
        raise Malformed(f"not JSON ({' '.join(text[:60].split())!r})") from None
    if not isinstance(data, dict):
        raise Malformed(f"expected a JSON object, got {type(data).__name__}")
    return data


def _choices(data: dict, want: int) -> list[dict]:
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) < want or not all(isinstance(c, dict) for c in choices):
        raise Malformed(f"expected {want} choice(s), got {choices!r:.60}")
    return choices


def parse_chat(data: dict, want: int) -> tuple[list[tuple[str, str]], dict]:
    """[(text, finish_reason)] for `want` choices, and the usage block (may be empty)."""
    out = []
    for choice in _choices(data, want)[:want]:
        message = choice.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), str | None):
            raise Malformed("a choice without message.content")
        out.append((message.get("content") or "", "length" if choice.get("finish_reason") == "length" else "stop"))
    usage = data.get("usage")
    return out, usage if isinstance(usage, dict) else {}


def parse_token_logprob(data: dict) -> float:
    """/v1/completions with logprobs=0: the log-probability of the one token generated."""
    try:
        value = _choices(data, 1)[0]["logprobs"]["token_logprobs"][0]
        return float(value)
    except (KeyError, IndexError, TypeError, ValueError):
        raise Malformed("no logprobs.token_logprobs in the answer") from None


def parse_top_logprobs(data: dict) -> dict[str, float]:
    """Chat completion with top_logprobs: {token text: log-probability} of the first generated token."""
    try:
        top = _choices(data, 1)[0]["logprobs"]["content"][0]["top_logprobs"]
        return {str(t["token"]): float(t["logprob"]) for t in top}
    except (KeyError, IndexError, TypeError, ValueError):
        raise Malformed("no logprobs.content[0].top_logprobs in the answer") from None


def pick_choices(top: dict[str, float], choices: list[str]) -> dict[str, float]:
    """Each choice's log-probability among the top tokens (" A" counts as "A"). A choice outside the list
    gets the smallest listed value, an upper bound on its own; with neither listed there is nothing to say."""
    found: dict[str, float] = {}
    for token, logp in top.items():
        key = token.strip()
        if key in choices:
            found[key] = max(logp, found.get(key, float("-inf")))
    if not found:
        return {}
    floor = min(top.values())
    return {c: found.get(c, floor) for c in choices}


async def _gather(coros: list) -> list:
    return list(await asyncio.gather(*coros))


class OpenAIEngine:
    name = "openai"
    backoff_initial_s = 0.5  # first wait; doubles each try up to backoff_max_s, times a jitter in [0.5, 1)
    backoff_max_s = 30.0

    def __init__(self, root: str, key: str, info: ServerInfo, *, model: str, concurrency: int = 16,
                 max_retries: int = 5, timeout_s: float = 120, tokenizer=None):
        import openai

        self.model, self.root, self.info, self.tokenizer = model, root, info, tokenizer
        self.max_retries = max_retries
        self.max_model_len = info.max_model_len  # None where the server does not say
        self.is_vllm = info.owned_by == "vllm"
        self.stats = EngineStats()
        self._secret = key if key != "EMPTY" else None
        self._jitter = random.Random()  # never the global random: vLLM and others reseed it
        # Retries are ours (counted, with Retry-After); the client's own would hide them.
        self._client = openai.AsyncOpenAI(base_url=root, api_key=key, max_retries=0, timeout=timeout_s)
        self._sem = asyncio.Semaphore(concurrency)  # binds to the engine's loop on first use
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, cfg: Any, model: str) -> OpenAIEngine:
        """From an EngineConfig: probes the server once, so a wrong URL or key stops the run at its start."""
        if not cfg.base_url:
            raise UserError("engine.base_url: required for engine.kind=openai, e.g. "
                            "engine.base_url=http://127.0.0.1:8000/v1")
        root = api_root(cfg.base_url)
        key = read_api_key(cfg.api_key_env)
        info = server_info(probe(root, key, min(cfg.timeout_s, 30), cfg.api_key_env), cfg.served_model or model, root)
        return cls(root, key, info, model=model, concurrency=cfg.concurrency, max_retries=cfg.max_retries,
                   timeout_s=cfg.timeout_s, tokenizer=local_tokenizer(model))

    # -- the protocol --------------------------------------------------------------------------------------
    def generate(self, convs: list[list[Message]], params: GenParams) -> list[list[Completion]]:
        """Every conversation at once; the semaphore keeps `concurrency` of them in flight."""
        return self._run(_gather([self._generate_one(c, params) for c in convs]))

    async def agenerate(self, conv: list[Message], params: GenParams) -> list[Completion]:
        future = asyncio.run_coroutine_threadsafe(self._generate_one(conv, params), self._loop)
        return await asyncio.wrap_future(future)

    def choice_logprobs(self, convs: list[list[Message]], choices: list[str]) -> list[dict[str, float] | str]:
        ids = choice_token_ids(self.tokenizer, choices) if self.tokenizer is not None else None
        if ids is not None and self.is_vllm:
            jobs = [self._exact_choices(c, choices, ids) for c in convs]
        else:
            jobs = [self._top_choices(c, choices) for c in convs]
        return self._run(_gather(jobs))

    def count_tokens(self, conv: list[Message]) -> int:
        if self.tokenizer is not None:
            return len(prompt_ids(self.tokenizer, conv))
        return sum(len(m["content"]) // 4 + 4 for m in conv)  # an estimate: the server's tokenizer is not here

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    # -- requests ------------------------------------------------------------------------------------------
    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _fits(self, conv: list[Message]) -> tuple[int | None, Failure | None]:
        """(prompt tokens, error) where we can count locally; the server's 400 says the same otherwise."""
        if self.tokenizer is None:
            return None, None
        n = self.count_tokens(conv)
        limit = self.info.max_model_len
        if limit and n >= limit:
            return n, too_long(n, limit)
        return n, None

    def _chat_body(self, conv: list[Message], params: GenParams, n_prompt: int | None) -> tuple[dict, dict]:
        sampling = params.temperature > 0
        body = {"model": self.info.model, "messages": [dict(m) for m in conv], "n": params.n if sampling else 1,
                "temperature": params.temperature, "top_p": params.top_p if sampling else 1.0,
                "max_tokens": params.max_tokens}
        if n_prompt is not None and self.info.max_model_len:
            body["max_tokens"] = min(params.max_tokens, self.info.max_model_len - n_prompt)
        if params.stop:
            body["stop"] = list(params.stop)
        # No per-request `seed`: vLLM's CPU server kills its engine on a seeded request whose prompt is
        # prefilled in chunks ("CPU Generator does not use offset"), which would fail every row after it.
        return body, self._prefix_extra(conv)

    def _prefix_extra(self, conv: list[Message]) -> dict:
        """A trailing assistant message is a prefix to continue (see chat.py); vLLM needs telling so."""
        _, prefix = split_prefix(conv)
        if prefix and self.is_vllm:
            return {"add_generation_prompt": False, "continue_final_message": True}
        return {}

    def _injected(self, conv: list[Message]) -> Failure | None:
        """A server renders the chat template and tokenises the text itself, and a vLLM server reads a control
        string in a message as the control token; we cannot make it plain text there, so the row is rejected."""
        strings = control_strings(self.tokenizer) if self.tokenizer is not None else COMMON_CONTROL_STRINGS
        found = find_control_string((m["content"] for m in conv), strings)
        if found is None:
            return None
        return self._error("control_tokens", f"the text holds the control string {found!r}, which a server would "
                           "read as a chat-template token; remove it from the input")

    async def _generate_one(self, conv: list[Message], params: GenParams) -> list[Completion]:
        injected = self._injected(conv)
        if injected:
            return [error_completion(injected)]
        n_prompt, failure = self._fits(conv)
        if failure:
            return [error_completion(failure)]
        body, extra = self._chat_body(conv, params, n_prompt)
        want = body["n"]
        try:
            texts, usage = await self._call(self._client.chat.completions, body, extra,
                                            lambda d: parse_chat(d, want))
        except Exception as e:
            return [error_completion(self._failure(e))]
        return self._completions(texts, usage, params.n)

    def _completions(self, texts: list[tuple[str, str]], usage: dict, n: int) -> list[Completion]:
        total = usage.get("completion_tokens")
        if isinstance(total, int) and len(texts) == 1:
            counts = [total]
        elif self.tokenizer is not None:
            counts = [len(self.tokenizer.encode(t, add_special_tokens=False)) for t, _ in texts]
        else:
            counts = [(total or 0) // len(texts)] * len(texts)
        self.stats.output_tokens += total if isinstance(total, int) else sum(counts)
        comps = [Completion(text=t, finish_reason=r, n_tokens=c) for (t, r), c in zip(texts, counts)]
        return comps * n if len(comps) == 1 else comps  # greedy: one decode, copied (as the local engines do)

    async def _exact_choices(self, conv: list[Message], choices: list[str], ids: list[int]) -> dict[str, float] | str:
        tokens = prompt_ids(self.tokenizer, conv)
        if self.info.max_model_len and len(tokens) >= self.info.max_model_len:
            return {}  # does not fit the context, as the other engines say it

        async def one(token_id: int) -> float:
            body = {"model": self.info.model, "prompt": tokens, "max_tokens": 1, "temperature": 0, "logprobs": 0}
            return await self._call(self._client.completions, body, {"allowed_token_ids": [token_id]},
                                    parse_token_logprob)

        try:
            values = await asyncio.gather(*(one(t) for t in ids))
        except Exception as e:
            return self._failure(e)
        return dict(zip(choices, values))

    async def _top_choices(self, conv: list[Message], choices: list[str]) -> dict[str, float] | str:
        injected = self._injected(conv)
        if injected:
            return injected
        body = {"model": self.info.model, "messages": [dict(m) for m in conv], "max_tokens": 1, "temperature": 0,
                "logprobs": True, "top_logprobs": TOP_LOGPROBS}
        try:
            top = await self._call(self._client.chat.completions, body, self._prefix_extra(conv), parse_top_logprobs)
        except Exception as e:
            return self._failure(e)
        picked = pick_choices(top, choices)
        if not picked:  # the model put its mass elsewhere: no verdict, and not the same thing as too long
            return self._error("no_choice_in_top_logprobs", f"none of {choices} among the server's top {TOP_LOGPROBS} tokens")
        return picked

    async def _call(self, resource, body: dict, extra: dict, parse: Callable[[dict], Any]) -> Any:
        """One request with our retries; a transient failure is retried, the last one raised."""
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_retries + 1), wait=self._wait,
                                 retry=retry_if_exception(is_transient), before_sleep=self._on_retry, reraise=True)
        async for attempt in retrying:
            with attempt:
                async with self._sem:
                    raw = await resource.with_raw_response.create(**body, extra_body=extra or None)
                return parse(_body_json(raw))

    def _wait(self, state) -> float:
        asked = retry_after(state.outcome.exception())
        if asked is not None:  # the server said when; a little jitter so waiting rows do not return as one
            return min(asked, MAX_RETRY_AFTER_S) * (1 + 0.1 * self._jitter.random())
        base = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (state.attempt_number - 1))
        return base * (0.5 + 0.5 * self._jitter.random())

    def _on_retry(self, state) -> None:
        self.stats.retries += 1
        log.debug("retry %d: %s", state.attempt_number, self._scrub(describe(state.outcome.exception())))

    def _failure(self, exc: BaseException) -> Failure:
        """'reason: detail' for a request that failed for good, counted by reason. Anything that is not a
        server's answer (a bug of ours) is raised, not turned into rejects."""
        import openai

        if not isinstance(exc, openai.APIError | Malformed):
            raise exc
        detail = self._scrub(describe(exc))
        if is_transient(exc):
            reason, detail = "server_error", f"{detail} (after {self.max_retries + 1} tries)"
        elif isinstance(exc, openai.APIStatusError) and any(m in detail.lower() for m in _CONTEXT_MARKERS):
            reason = "too_long"
        else:
            reason = "bad_request"
        return self._error(reason, detail)

    def _error(self, reason: str, detail: str) -> Failure:
        """A conversation that failed, counted by reason in the engine's stats."""
        return self._count(Failure.of(reason, detail))

    def _count(self, failure: Failure) -> Failure:
        self.stats.errors[failure.reason] = self.stats.errors.get(failure.reason, 0) + 1
        return failure

    def _scrub(self, text: str) -> str:
        """One line, short, and never the key (some servers echo part of a rejected key back)."""
        text = " ".join(str(text).split())
        if self._secret:
            text = text.replace(self._secret, "***")
        return text[:300]
