"""The stages, in pipeline order: the one list everything else derives from (config validation, the CLI's
help, the unknown-stage message, the summary table, what --restart may clear). Adding a stage is one module
here plus one entry in STAGES.

scope "shard": `run(inputs, engine, ctx) -> StageResult` over one shard; the executor calls it through
  `pipeline.run_shard`, locally or inside a Ray actor.
scope "run": `run(ctx) -> summary` over the whole run folder, on the driver, after the shards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from cai_pipeline import records
from cai_pipeline.stages import audit, export, judge, pairs, revise, sample, train


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]  # stages (or "prompts") it reads; see inputs_for
    record: type | None  # the row model of its shards (scope "shard")
    model_role: str | None  # "policy", "judge", or None for a stage that needs no model
    settings: tuple[str, ...]  # config sections that shape its output
    run: Callable[..., Any]
    scope: Literal["shard", "run"]
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

    def inputs_for(self, cfg) -> tuple[str, ...]:
        return self.select_inputs(cfg, self.inputs) if self.select_inputs else self.inputs


STAGES: tuple[Stage, ...] = (
    Stage("sample", ("prompts",), records.SampleRecord, "policy",
          ("model", "engine", "seed", "shard_size", "prompts", "sample"), sample.run, "shard"),
    Stage("revise", ("sample",), records.ReviseRecord, "policy", ("revise",), revise.run, "shard"),
    Stage("pairs", ("sample", "revise"), records.PairRecord, None, ("pairs",), pairs.run, "shard",
          select_inputs=pairs.select_inputs),
    Stage("judge", ("pairs",), records.JudgeRecord, "judge", ("judge",), judge.run, "shard"),
    Stage("export", export.INPUTS, None, None, ("export",), export.run, "run",
          identity=export.identity, outputs=export.outputs),
    Stage("train", ("export",), None, None, ("train",), train.run, "run",
          identity=train.identity, outputs=train.outputs, on_change="refuse"),
    # Its engines (model, baseline, judge: one at a time) come from the executor's pool by name, not by role.
    Stage("audit", ("train",), None, None, ("seed", "audit"), audit.run, "run",
          identity=audit.identity, outputs=audit.outputs, check=audit.check),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
SHARDED: tuple[str, ...] = tuple(s.name for s in STAGES if s.scope == "shard")


def unknown_stage_message(name: str) -> str:
    import difflib

    near = difflib.get_close_matches(name, NAMES, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown stage {name!r}; {hint}stages are {', '.join(NAMES)}"


def ordered(names: list[str]) -> list[Stage]:
    """The named stages in pipeline order (the order given does not matter)."""
    return [s for s in STAGES if s.name in names]
