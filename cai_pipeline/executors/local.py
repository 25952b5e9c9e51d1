"""The local executor: the shards of a stage one after another in this process, on one engine at a time.
`Engines` (the engine of each role, built on first use) serves it, the Ray workers and run-scope stages."""

from __future__ import annotations

from functools import partial

from cai_pipeline.errors import UserError
from cai_pipeline.executors.base import run_shard
from cai_pipeline.store import RunLayout


def check_token_limits(cfg, engine) -> None:
    """A max_tokens the context cannot hold is a config mistake, not something to clamp silently."""
    context = getattr(engine, "max_model_len", None)
    if context is None:  # a server that does not say
        return
    for key, value in (("sample.max_tokens", cfg.sample.max_tokens), ("revise.max_tokens", cfg.revise.max_tokens),
                       ("judge.reasoning_max_tokens", cfg.judge.reasoning_max_tokens)):
        if value >= context:
            raise UserError(f"{key}={value} does not fit the model's context of {context} tokens; "
                            f"lower it (or raise engine.max_model_len if the model allows)")


def model_for(cfg, role: str) -> str:
    return (cfg.judge.model or cfg.model) if role == "judge" else cfg.model


class Engines:
    """Builds engines on first use (a finished run resumes without starting one), one at a time: a stage
    that needs another model closes the one before. A caller may hand in a ready engine (tests share one per
    session); it serves every role and stays open."""

    def __init__(self, cfg, shared_engine=None):
        self.cfg, self.shared = cfg, shared_engine
        self.role: str | None = None
        self.key: tuple[str, str | None] | None = None  # (model, server URL) of the open engine
        self.engine = None
        self.stats: dict[str, dict] = {}
        self.loads: dict[str, int] = {}  # engines built per role: each a model load (or a server probed)

    def get(self, role: str):
        """The engine of a pipeline role: "policy" (the run's model) or "judge" (judge.model)."""
        return self.open(role, model_for(self.cfg, role))

    def is_open(self, role: str) -> bool:
        """Whether `get(role)` would hand back an engine already running (no model load)."""
        return self.shared is not None or (self.engine is not None and self.key == (model_for(self.cfg, role), None))

    def open(self, role: str, model: str, url: str | None = None, url_key: str = "engine.base_url"):
        """The engine for `model` (served through the openai engine at `url` when given, the setting
        `url_key`), reusing the open one when it is the same model; `role` names it in the manifest's engine
        stats."""
        if self.shared is not None:
            return self.shared
        if self.engine is not None and self.key == (model, url):
            return self.engine
        self.close()
        from cai_pipeline.engines import make_engine

        if url is None:
            engine = make_engine(self.cfg, model=model)
        else:
            options = {**self.cfg.engine.model_dump(exclude={"kind"}), "base_url": url, "served_model": None}
            try:
                engine = make_engine(kind="openai", model=model, seed=self.cfg.seed, **options,
                                     batch_dir=str(RunLayout(self.cfg.out_dir).batches))
            except UserError as e:  # the engine speaks of its own setting; the user set this one
                raise UserError(str(e).replace("engine.base_url", url_key)) from None
        self.engine, self.role, self.key = engine, role, (model, url)
        self.loads[role] = self.loads.get(role, 0) + 1
        check_token_limits(self.cfg, self.engine)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            s = self.engine.stats
            self.stats[self.role] = {"retries": s.retries, "errors": dict(s.errors), "loads": self.loads[self.role]}
            self.engine.close()
            self.engine, self.key = None, None


class LazyEngine:
    """The engine of a role, opened on first use: a judge stage whose checks decide every pair (a check-only
    constitution) never loads a judge model. Its stats read zero until then, which is what a fresh engine's
    read: an engine already open (the judge is the policy) is taken at once, so a shard's token count
    (before and after, in run_shard) never takes in what the engine generated for earlier stages."""

    def __init__(self, engines: Engines, role: str):
        self._engines, self._role = engines, role
        self._engine = engines.get(role) if engines.is_open(role) else None

    @property
    def stats(self):
        from cai_pipeline.engines.base import EngineStats

        return self._engine.stats if self._engine is not None else EngineStats()

    def __getattr__(self, name: str):
        if self._engine is None:
            self._engine = self._engines.get(self._role)
        return getattr(self._engine, name)


class LocalExecutor:
    def __init__(self, cfg, shared_engine=None):
        self.engines = Engines(cfg, shared_engine)

    def run(self, stage, shards, assets, store, *, on_done, on_rows) -> None:
        for shard in shards:
            role = stage.model_role
            engine = None if not role else LazyEngine(self.engines, role) if role == "judge" else self.engines.get(role)
            stats = run_shard(stage, store, shard, assets, engine, on_rows=partial(on_rows, shard))
            if stats is not None:
                on_done(shard, stats)

    def release(self) -> None:
        self.engines.close()

    def close(self) -> None:
        self.engines.close()

    def engine_stats(self) -> dict:
        return dict(self.engines.stats)
