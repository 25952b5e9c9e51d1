"""A stand-in engine that needs no model, for tests about folders, errors and resume rather than text."""

from __future__ import annotations

from cai_pipeline.engines.base import Completion, EngineStats


class EchoEngine:
    name, model = "echo", "echo"
    max_model_len = 2048

    def __init__(self):
        self.stats = EngineStats()

    def generate(self, convs, params):
        self.stats.output_tokens += 2 * params.n * len(convs)
        return [[Completion(f"echo {len(c)} {k} {c[-1]['content'][:20]}", "stop", 2) for k in range(params.n)]
                for c in convs]

    def choice_logprobs(self, convs, choices):
        return [{c: -1.0 - i for i, c in enumerate(choices)} for _ in convs]

    def count_tokens(self, conv):
        return sum(len(m["content"].split()) for m in conv)

    def close(self):
        pass
