"""`python -m tests.interrupt_runner ARGS...` is `cai ARGS...` with a stand-in engine that can hold still inside
a chosen stage, so a test can send SIGINT while that stage is working (tests/test_interrupt.py).

CAI_TEST_HOLD=<stage>: the first engine call made by that stage (for `train`, the second optimizer step) writes
the stage's name to CAI_TEST_MARKER and sleeps; the test sees the marker and interrupts. Without it, the engine
answers at once. `engine.kind` cannot name a stand-in, so it is put in place of make_engine here, as
tests/test_resume.py puts its kills in place of store.atomic_write: the package itself carries no test hooks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from tests.echo_engine import EchoEngine

HOLD = os.environ.get("CAI_TEST_HOLD", "")
HOLD_S = 120  # far longer than any test waits: an interrupt that does not land fails the test on its timeout
current = {"stage": None}


def hold(where: str) -> None:
    if HOLD and where == HOLD:
        Path(os.environ["CAI_TEST_MARKER"]).write_text(where)
        time.sleep(HOLD_S)


class HeldEcho(EchoEngine):
    """EchoEngine's texts, log-probs from a hash of the conversation (so the judge has verdicts, not ties), an
    `agenerate` (so revise.mode=chains runs), and a hold in the stage CAI_TEST_HOLD names."""

    def generate(self, convs, params):
        hold(current["stage"])
        return super().generate(convs, params)

    async def agenerate(self, conv, params):
        if HOLD and current["stage"] == HOLD:
            Path(os.environ["CAI_TEST_MARKER"]).write_text(HOLD)
            await asyncio.sleep(HOLD_S)  # the event loop sits in its selector: SIGINT lands there
        return super().generate([conv], params)[0]

    def choice_logprobs(self, convs, choices):
        hold(current["stage"])
        out = []
        for conv in convs:
            h = hashlib.sha256(json.dumps(conv).encode()).digest()
            out.append({c: -1.0 - h[i] / 64 for i, c in enumerate(choices)})
        return out


def install() -> None:
    """Put the stand-in engine and the stage tracking in place (also used in-process for reference runs)."""
    import cai_pipeline.engines as engines
    import cai_pipeline.executors.local as local
    import cai_pipeline.pipeline as pipeline

    run_shard, run_whole = local.run_shard, pipeline.run_whole

    def tracked_shard(stage, *args, **kwargs):
        current["stage"] = stage.name
        return run_shard(stage, *args, **kwargs)

    def tracked_whole(stage, ctx):
        current["stage"] = stage.name
        return run_whole(stage, ctx)

    local.run_shard, pipeline.run_whole = tracked_shard, tracked_whole
    engines.make_engine = lambda *args, **kwargs: HeldEcho()
    if HOLD == "train":  # only then: importing the trainer imports torch, seconds a child need not spend
        import cai_pipeline.train.loop as loop

        train_step = loop.train_step

        def held_step(run, step):
            if step == 1:  # step 0 is done and its state saved (save_every=1)
                hold("train")
            return train_step(run, step)

        loop.train_step = held_step


if __name__ == "__main__":
    install()
    from cai_pipeline.cli import main

    sys.exit(main(sys.argv[1:]))
