"""Ctrl-C while chains run on a continuous-batching engine: KeyboardInterrupt at once (not after the engine has
finished the batch it is in), every cancelled chain's request withdrawn from vLLM, no result handed to a
cancelled row (the `InvalidStateError` that ended `revise.mode=chains` after ~25 s of more generation), and the
engine usable afterwards. First on vLLMEngine's own code with a stand-in for vLLM's LLMEngine, then once on
the real engine. A real SIGINT each time: it is the signal, and where it lands, that is under test.

(The whole command, interrupted in every stage of a run, is tests/test_interrupt.py.)
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from cai_pipeline.engines.base import EngineStats, GenParams
from cai_pipeline.engines.chains import run_chains
from cai_pipeline.engines.vllm import VLLMEngine

CONV = [{"role": "user", "content": "Tell me a long story about a dragon."}]
PARAMS = GenParams(n=1, temperature=0.8, top_p=0.95, max_tokens=200, seed=1)


class StandInLLMEngine:
    """vLLM's LLMEngine as VLLMEngine drives it: add_request, step (each request finishes after `steps` steps),
    abort_request. `on_step(n)` runs inside step n, where the real engine spends its time."""

    def __init__(self, steps: int, on_step=None, honours_abort: bool = True):
        self.left: dict[str, int] = {}
        self.steps, self.on_step, self.honours_abort = steps, on_step, honours_abort
        self.calls, self.aborted = 0, []

    def add_request(self, rid, prompt, params):
        self.left[rid] = self.steps

    def abort_request(self, ids):
        self.aborted += ids
        for rid in ids if self.honours_abort else ():
            self.left.pop(rid, None)

    def step(self):
        self.calls += 1
        if self.on_step:
            self.on_step(self.calls)
        done = []
        for rid in list(self.left):
            self.left[rid] -= 1
            if not self.left[rid]:
                del self.left[rid]
                out = SimpleNamespace(text=f"done {rid}", token_ids=[1, 2], finish_reason="stop")
                done.append(SimpleNamespace(request_id=rid, finished=True, outputs=[out]))
        return done


def engine_over(llm_engine) -> VLLMEngine:
    """VLLMEngine's chain machinery (agenerate, the pump) over a stand-in: no model, no vLLM."""
    engine = object.__new__(VLLMEngine)
    engine.llm, engine.stats, engine._ids = SimpleNamespace(llm_engine=llm_engine), EngineStats(), itertools.count()
    engine._pending, engine._pump, engine._head_modes, engine._head_fp32, engine.on_cpu = {}, None, False, False, False
    engine._request = lambda conv, params: (("prompt", "sampling"), None)
    return engine


async def two_steps(gen):
    return [(await gen(CONV, PARAMS))[0].text for _ in range(2)]


def test_sigint_in_an_engine_step_stops_at_once_and_withdraws_every_request():
    def interrupt(n: int) -> None:
        if n == 3:
            signal.raise_signal(signal.SIGINT)  # delivered inside the step, as a Ctrl-C mostly is

    fake = StandInLLMEngine(steps=50, on_step=interrupt)
    engine = engine_over(fake)
    with pytest.raises(KeyboardInterrupt):
        run_chains(engine, [two_steps] * 4, mode="chains")
    assert fake.calls == 3  # not the 50 steps the requests had left
    assert sorted(fake.aborted) == [f"chain-{i}" for i in range(4)] and fake.left == {} and engine._pending == {}


def test_a_withdrawn_request_that_finishes_anyway_is_dropped():
    """An engine that finishes a request after its row was cancelled: the pump hands the result to no one
    (a cancelled future takes none) and goes on serving the other rows."""
    fake = StandInLLMEngine(steps=3, honours_abort=False)
    engine = engine_over(fake)

    async def main():
        doomed = asyncio.ensure_future(engine.agenerate(CONV, PARAMS))
        alive = asyncio.ensure_future(engine.agenerate(CONV, PARAMS))
        await asyncio.sleep(0)
        doomed.cancel()
        return await alive, engine._pump

    result, pump = asyncio.run(main())
    assert result[0].text == "done chain-1" and fake.aborted == ["chain-0"]
    assert pump.done() and pump.exception() is None and engine._pending == {}


@pytest.mark.model
def test_ctrl_c_in_chains_on_the_real_vllm_engine(vllm_engine):
    """SIGINT after the chains' first engine step: out at once, nothing left running, the engine still works."""
    llm_engine = vllm_engine.llm.llm_engine
    stepped, real_step = threading.Event(), llm_engine.step

    def step():
        stepped.set()
        return real_step()

    def press_ctrl_c():
        if stepped.wait(120):
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    llm_engine.step = step
    try:
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_chains(vllm_engine, [two_steps] * 4, mode="chains")
        seconds = time.monotonic() - start
    finally:
        del llm_engine.step
    assert vllm_engine._pending == {} and not llm_engine.has_unfinished_requests()
    assert seconds < 30, f"{seconds:.1f} s"  # 4 chains x 2 x 200 tokens would take minutes here
    out = vllm_engine.generate([CONV], GenParams(n=1, temperature=0.0, max_tokens=4, seed=0))
    assert out[0][0].error is None and out[0][0].n_tokens > 0
