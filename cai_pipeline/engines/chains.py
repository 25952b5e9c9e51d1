"""Run many multi-step chains (one per row) against one engine.

A chain is `async def chain(gen) -> result`, where `await gen(conv, params)` returns that conversation's
completions. Written once, a chain runs two ways:

- natively, on an engine with continuous batching (`engine.agenerate`: vLLM, an OpenAI-compatible server):
  each row's next request goes in the moment its previous one finishes, so the engine never idles waiting
  for a round's slowest sequence;
- round-batched, on any engine: requests are held until every live chain is waiting, then sent as one
  `generate` call per distinct GenParams — one batch per step of the stage, never one call per row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from cai_pipeline.engines.base import Completion, Engine, GenParams, Message
from cai_pipeline.errors import UserError

T = TypeVar("T")
Gen = Callable[[list[Message], GenParams], Awaitable[list[Completion]]]


class RoundBatcher:
    """`agenerate` for engines without continuous batching: gathers one request from every live chain."""

    def __init__(self, engine: Engine, live: int):
        self.engine = engine
        self.live = live
        self.queue: list[tuple[list[Message], GenParams, asyncio.Future]] = []
        self.calls = 0

    async def agenerate(self, conv: list[Message], params: GenParams) -> list[Completion]:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((conv, params, future))
        self._flush_if_all_waiting()
        return await future

    def chain_done(self) -> None:
        self.live -= 1
        self._flush_if_all_waiting()

    def _flush_if_all_waiting(self) -> None:
        if not self.queue or len(self.queue) < self.live:
            return
        batch, self.queue = self.queue, []
        # An engine that seeds each row (row_seeds) takes one call per step with a seed per row; otherwise the
        # seed is the call's, and rows of one step share it.
        per_row = getattr(self.engine, "row_seeds", False)
        groups: dict[GenParams, list[int]] = {}
        for i, (_, params, _) in enumerate(batch):
            groups.setdefault(replace(params, seed=None) if per_row else params, []).append(i)
        try:
            for params, idx in groups.items():
                self.calls += 1
                convs = [batch[i][0] for i in idx]
                results = (self.engine.generate(convs, params, seeds=[batch[i][1].seed for i in idx]) if per_row
                           else self.engine.generate(convs, params))
                for i, comps in zip(idx, results, strict=True):
                    if not batch[i][2].done():  # a row cancelled meanwhile takes no result
                        batch[i][2].set_result(comps)
        except Exception as e:  # every waiting chain must hear of it, or gather would wait forever
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(e)


def uses_native(engine: Engine, mode: str) -> bool:
    native = hasattr(engine, "agenerate")
    if mode == "chains" and not native:
        raise UserError(f"revise.mode=chains needs an engine with continuous batching (vllm, openai), not "
                        f"{engine.name}; use revise.mode=auto or rounds")
    return native and mode != "rounds"


def run_chains(engine: Engine, chains: list[Callable[[Gen], Awaitable[T]]], *, mode: str = "auto") -> list[T]:
    """Run every chain to completion and return their results in order."""
    if not chains:
        return []
    native = uses_native(engine, mode)

    async def main() -> list[Any]:
        if native:
            return await asyncio.gather(*(chain(engine.agenerate) for chain in chains))
        batcher = RoundBatcher(engine, len(chains))

        async def one(chain):
            try:
                return await chain(batcher.agenerate)
            finally:
                batcher.chain_done()

        return await asyncio.gather(*(one(chain) for chain in chains))

    return run_until_done(main())


def run_until_done(coro: Awaitable[T]) -> T:
    """Run `coro` on a new event loop, as asyncio.run does, but without its Ctrl-C handler. asyncio.run turns the
    first SIGINT into a cancellation that lands only when the loop next switches tasks — after the engine step or
    the round-batched `generate` it is in, and on vLLM the chains' requests went on generating besides. Here
    SIGINT raises KeyboardInterrupt at once, wherever the loop is; every chain is then cancelled (an engine
    withdraws its requests: VLLMEngine.agenerate) and the loop closed before it propagates."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # as asyncio.run: code that asks for "the" loop gets this one
    loop.set_exception_handler(_quiet_interrupts)
    main = loop.create_task(coro)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop, main)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _quiet_interrupts(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A task an interrupt passed through says "exception never retrieved" when it is collected: the caller is
    raising that interrupt already, so say nothing of it; report anything else as asyncio would."""
    if not isinstance(context.get("exception"), KeyboardInterrupt):
        loop.default_exception_handler(context)


def _cancel_all(loop: asyncio.AbstractEventLoop, main: asyncio.Task) -> None:
    """Cancel every task left on `loop` and let each finish, then mark what they raised as retrieved (it is
    being raised by the caller). A task that awaited the one an interrupt hit raises it again; a few passes."""
    tasks = asyncio.all_tasks(loop) | {main}
    for task in tasks:
        task.cancel()
    for _ in range(3):
        left = [t for t in tasks if not t.done()]
        if not left:
            break
        with contextlib.suppress(KeyboardInterrupt):
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
