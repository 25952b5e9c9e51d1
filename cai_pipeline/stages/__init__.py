"""The stages, in pipeline order: the one list everything else derives from — the CLI's help and the
unknown-stage message, the fingerprints (`content`, `settings`), what `--restart` may clear (`entries`), the
rounds of `cai iterate` (`rounds`), and the summary table (`summary_line`). Adding a stage is one module plus
one entry in STAGES (tests/stages/test_registry.py registers a toy stage and runs it through `cai run`).

scope "shard": `run(inputs, engine, ctx) -> StageResult` over one shard; an executor calls it through
  `executors.base.run_shard`, locally or inside a Ray actor.
scope "run": `run(ctx) -> summary` over the whole run folder, on the driver, after the shards.

Read the list through the functions below (or `stages.STAGES`), never from a copy taken at import time.
"""

from __future__ import annotations

import difflib

from cai_pipeline import records
from cai_pipeline.audit import stage as audit
from cai_pipeline.stages import export, judge, pairs, revise, sample, train
from cai_pipeline.stages.base import Stage

SL, RL = "sl", "rl"  # `cai iterate`'s round kinds: SFT on revisions, preference training

STAGES: tuple[Stage, ...] = (
    Stage("sample", ("prompts",), records.SampleRecord, "policy",
          ("model", "engine", "seed", "shard_size", "prompts", "sample"), sample.run, "shard",
          content=("prompts",), rounds=(SL, RL)),
    Stage("revise", ("sample",), records.ReviseRecord, "policy", ("revise",), revise.run, "shard",
          content=("constitution", "templates"), rounds=(SL,)),
    Stage("pairs", ("sample", "revise"), records.PairRecord, None, ("pairs",), pairs.run, "shard",
          select_inputs=pairs.select_inputs, rounds=(RL,)),
    Stage("judge", ("pairs",), records.JudgeRecord, "judge", ("judge",), judge.run, "shard",
          content=("constitution", "templates"), rounds=(RL,)),
    Stage("export", export.INPUTS, None, None, ("export",), export.run, "run", rounds=(SL, RL),
          owns=("datasets",), identity=export.identity, outputs=export.outputs, summary_line=export.summary_line),
    Stage("train", ("export",), None, None, train.SETTINGS, train.run, "run", rounds=(SL, RL),
          owns=("checkpoint", "train"), identity=train.identity, outputs=train.outputs, on_change="refuse",
          check=lambda *args, **kw: train.check(*args, **kw, owned=owned_entries()), summary_line=train.summary_line),
    # Its engines (model, baseline, judge: one at a time) come from the executor's pool by name, not by role.
    Stage("audit", ("train",), None, None, ("seed", "audit"), audit.run, "run", rounds=(SL, RL), owns=("audit",),
          identity=audit.identity, outputs=audit.outputs, check=audit.check, summary_line=audit.summary_line),
)


def names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


def find(name: str) -> Stage | None:
    return next((s for s in STAGES if s.name == name), None)


def sharded() -> tuple[Stage, ...]:
    return tuple(s for s in STAGES if s.scope == "shard")


def ordered(wanted: list[str]) -> list[Stage]:
    """The named stages in pipeline order (the order given does not matter)."""
    return [s for s in STAGES if s.name in wanted]


def for_round(kind: str) -> list[str]:
    """The stages a `cai iterate` round of `kind` runs, in order."""
    return [s.name for s in STAGES if kind in s.rounds]


def owned_entries() -> list[str]:
    """The run folder's top-level entries the stages write (each shard stage's folder, each run-scope
    stage's `owns`): with the layout's fixed entries, everything `--restart` may clear."""
    return [entry for s in STAGES for entry in s.entries]


def unknown_stage_message(name: str) -> str:
    near = difflib.get_close_matches(name, names(), n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"unknown stage {name!r}; {hint}stages are {', '.join(names())}"
