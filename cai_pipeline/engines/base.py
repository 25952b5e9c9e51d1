"""The engine protocol: the one interface every stage talks to.

- `generate` takes the whole batch at once; the engine schedules it. Engines with `row_seeds` true (vllm, hf,
  when engine.row_seeds is on) also take `seeds=`, one per conversation: each row draws from its own seed, so
  its output does not depend on the rest of the batch.
- `choice_logprobs` gives, per conversation, log P(next assistant token = choice) for single-token choices:
  one prefill, no decoding. The judge is built on it. A conversation too long for the context gets `{}`;
  one that failed otherwise (a server that kept erroring) gets its `"reason: detail"` string instead.
- Engines with continuous batching also offer `agenerate` (one conversation, awaitable), so a multi-step
  stage can run every row's chain concurrently and keep the engine full between steps.

A conversation that fails (too long for the context, a server that keeps erroring) comes back as one
`Completion` with `finish_reason="error"` and `error="reason: detail"` (reason a short code such as
`too_long` or `server_error`); the stage sends that row to rejects with the reason. Never None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypedDict, runtime_checkable


class Message(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class GenParams:
    n: int = 1
    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    # Seeds the call, not the row: same seed + same batch → same output on a deterministic engine.
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "error"
    n_tokens: int
    error: str | None = None


@dataclass
class EngineStats:
    """Counters the manifest records (retries for the OpenAI engine; output tokens for all)."""

    output_tokens: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    name: str
    model: str
    stats: EngineStats

    def generate(self, convs: list[list[Message]], params: GenParams) -> list[list[Completion]]: ...

    def choice_logprobs(self, convs: list[list[Message]], choices: list[str]) -> list[dict[str, float] | str]: ...

    def count_tokens(self, conv: list[Message]) -> int: ...

    def close(self) -> None: ...


class Failure(str):
    """Why one row failed, as the text "reason: detail": `reason` a short code the manifest counts (too_long,
    server_error), `detail` what happened. A str, so records, rejects and messages carry it as plain text; this
    class is the one place that text is built and read back."""

    @classmethod
    def of(cls, reason: str, detail: str) -> Failure:
        return cls(f"{reason}: {detail}")

    @property
    def reason(self) -> str:
        return self.split(":", 1)[0].strip() or "engine_error"

    @property
    def detail(self) -> str:
        return self.split(":", 1)[1].strip() if ":" in self else str(self)


def too_long(n_tokens: int, context: int) -> Failure:
    return Failure.of("too_long", f"prompt of {n_tokens} tokens fills the context ({context})")


def error_completion(failure: str) -> Completion:
    return Completion(text="", finish_reason="error", n_tokens=0, error=Failure(failure))
