"""What every stage shares: its entry in the stage list (`Stage`), its context (plain values, no globals) and
its result (rows, rejects, counts).

A shard-scope stage is `run(inputs, engine, ctx: StageContext) -> StageResult` over one shard's rows; a
run-scope stage is `run(ctx: RunContext) -> dict` (its summary) over the whole run folder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cai_pipeline.engines.base import Completion, Failure
from cai_pipeline.records import make_reject
from cai_pipeline.rng import derive_seed, rng_for

__all__ = ["RunContext", "Stage", "StageContext", "StageResult", "error_reason", "make_reject"]


@dataclass(frozen=True)
class Stage:
    """One entry of the stage list (stages/__init__.py). Everything that differs between stages is here, so
    the pipeline, the executors, the fingerprints, `--restart`, `cai iterate` and the summary table derive
    what they need from the list and never branch on a stage's name."""

    name: str
    inputs: tuple[str, ...]  # stages (or "prompts") it reads; see inputs_for
    record: type | None  # the row model of its shards (scope "shard")
    model_role: str | None  # "policy", "judge", or None for a stage that needs no model
    settings: tuple[str, ...]  # config sections that shape its output
    run: Callable[..., Any]
    scope: Literal["shard", "run"]
    # what it reads besides settings and inputs, by asset name (prompts, constitution, templates): recorded in
    # its fingerprint, so an edited constitution is noticed by the stages that read it
    content: tuple[str, ...] = ()
    # the kinds of `cai iterate` round it runs in ("sl": SFT on revisions; "rl": preference training)
    rounds: tuple[str, ...] = ()
    # scope "run": the run folder's top-level entries it writes (what `--restart` may clear); a shard stage
    # owns its folder, <name>/
    owns: tuple[str, ...] = ()
    # scope "run": what it reads (recorded; a change means it must run again) and the files it leaves
    identity: Callable[..., dict] | None = None
    outputs: Callable[..., list] | None = None
    # scope "run": when its settings or inputs changed and its outputs exist, redo it (derived data, cheap)
    # or refuse (costly to make, and the user's to discard: a checkpoint)
    on_change: Literal["redo", "refuse"] = "redo"
    select_inputs: Callable[[Any, tuple[str, ...]], tuple[str, ...]] | None = None
    # `check(assets, planned_stage_names, models)`: what the stage will need, checked before the run touches
    # its folder (models: also whether each model exists; off when the caller hands in a ready engine)
    check: Callable[..., None] | None = None
    # scope "run": (out, details) for the summary table, from the summary its run returned
    summary_line: Callable[[dict], tuple[str, str]] | None = None

    def inputs_for(self, cfg) -> tuple[str, ...]:
        return self.select_inputs(cfg, self.inputs) if self.select_inputs else self.inputs

    @property
    def entries(self) -> tuple[str, ...]:
        """The run folder's top-level entries this stage writes."""
        return (self.name,) if self.scope == "shard" else self.owns


@dataclass
class StageContext:
    seed: int
    shard: int
    cfg: Any  # RunConfig: stages read their own section
    constitution: Any = None  # Constitution, where the stage needs one
    templates: Any = None  # TemplateSet
    progress: Any = None  # optional callable(rows): rows of this shard finished so far, for progress lines
    reuse: Any = None  # reuse.ReuseSource: an earlier run whose rows may be taken where their keys match

    def call_seed(self, stage: str, *keys: object) -> int:
        """Seed for one engine call: keyed by stage, shard and step, so re-running a shard repeats it."""
        return derive_seed(self.seed, stage, self.shard, *keys)

    def rng(self, *keys: object):
        """Row-level randomness keyed by ids (prompt_id, sample_idx, round), independent of shards."""
        return rng_for(self.seed, *keys)


@dataclass
class RunContext:
    """What a run-scope stage sees: the config, the run folder, what the run loaded, the manifest so far (read
    only: the executor records the stage's summary), and `engines.get(role)` for stages that need a model."""

    cfg: Any  # RunConfig
    store: Any  # RunStore
    assets: Any  # Assets
    manifest: dict
    engines: Any = None
    redo: bool = False  # asked to run again from scratch (`cai train --restart`): no skip, no resume
    fingerprint: dict | None = None  # what pipeline.run_whole records for this run: a stage may keep it too


@dataclass
class StageResult:
    rows: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # anything worth counting besides rows and rejects
    keys: dict | None = None  # {"rows": {identity: key}}: the rows' content keys (rowkeys.py), kept by the store


def error_reason(comp: Completion) -> str:
    """The countable reason of a failed completion (engines write errors as Failure texts)."""
    return Failure(comp.error or "engine_error").reason
