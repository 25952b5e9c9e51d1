"""The pipeline: an ordered list of stages, run shard by shard into a resumable run folder.

Each generation stage reads shard i of its inputs and writes shard i of its output (see store.py). A finished
shard is never redone, so running the same command again resumes. Every stage's settings are fingerprinted
in the manifest; a run folder made with other settings is refused (or cleared with --restart), because
mixing shards from two configurations would silently corrupt the datasets.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cai_pipeline import __version__, records
from cai_pipeline.config import PROJECT_ROOT, RunConfig, resolve_resource
from cai_pipeline.errors import UserError
from cai_pipeline.inputs import LoadedPrompts, load_prompts
from cai_pipeline.report import print_summary, progress, quiet_libraries
from cai_pipeline.stages.base import StageContext, StageResult
from cai_pipeline.store import RunStore, atomic_write_text, write_parquet


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[str, ...]
    record: type
    engine: str | None  # "policy", "judge", or None for stages that need no model
    settings: tuple[str, ...]  # config sections that change this stage's output


SPECS = {
    "sample": StageSpec("sample", ("prompts",), records.SampleRecord, "policy",
                        ("model", "engine", "seed", "shard_size", "prompts", "sample")),
    "revise": StageSpec("revise", ("sample",), records.ReviseRecord, "policy", ("revise",)),
    "pairs": StageSpec("pairs", ("sample", "revise"), records.PairRecord, None, ("pairs",)),
    "judge": StageSpec("judge", ("pairs",), records.JudgeRecord, "judge", ("judge",)),
}
SHARDED = tuple(SPECS)
_OPERATIONAL = {"concurrency", "max_retries", "timeout_s", "api_key_env"}  # engine keys that change no output


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_inputs(spec: StageSpec, cfg: RunConfig) -> tuple[str, ...]:
    """Pairs read revise shards only where revision pairs are wanted and the run revises."""
    if spec.name == "pairs" and not (cfg.pairs.revision and "revise" in cfg.stages):
        return ("sample",)
    return spec.inputs


@dataclass
class Assets:
    """What a run reads besides its config, loaded once."""

    prompts: LoadedPrompts
    constitution: object = None
    templates: object = None
    hashes: dict = field(default_factory=dict)


def load_assets(cfg: RunConfig) -> Assets:
    from cai_pipeline.constitution import constitution_sha256, load_constitution
    from cai_pipeline.templates import TemplateSet

    prompts = load_prompts(cfg.prompts.path, fmt=cfg.prompts.format, limit=cfg.prompts.limit,
                           system_prompt=cfg.prompts.system_prompt)
    constitution = load_constitution(resolve_resource(cfg.constitution))
    templates = TemplateSet.for_constitution(constitution)
    hashes = {"prompts": _sha(prompts.rows), "constitution": constitution_sha256(constitution),
              "templates": templates.template_hashes()}
    return Assets(prompts, constitution, templates, hashes)


def fingerprints(cfg: RunConfig, assets: Assets) -> dict[str, dict]:
    """Per stage: the settings that shape its output, including everything upstream of it."""
    dump = cfg.model_dump()
    dump["engine"] = {k: v for k, v in dump["engine"].items() if k not in _OPERATIONAL}
    extra = {"sample": {"prompts_sha256": assets.hashes["prompts"]},
             "revise": {"constitution_sha256": assets.hashes["constitution"], "templates": assets.hashes["templates"]},
             "judge": {"constitution_sha256": assets.hashes["constitution"], "templates": assets.hashes["templates"]}}
    out, upstream = {}, {}
    for name, spec in SPECS.items():
        upstream = {**upstream, **{k: dump[k] for k in spec.settings}, **extra.get(name, {})}
        out[name] = dict(upstream)
    return out


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def check_resume(store: RunStore, manifest: dict | None, prints: dict[str, dict]) -> None:
    """Refuse to mix shards made under different settings; say which settings differ."""
    if not manifest:
        return
    for name in SHARDED:
        old = manifest.get("fingerprints", {}).get(name)
        if old is None or not store.shard_indices(name):
            continue
        changed = _changed_keys(old, prints[name])
        if changed:
            shown = ", ".join(changed[:4]) + (" …" if len(changed) > 4 else "")
            raise UserError(
                f"{store.root} was made with different settings for stage {name!r} ({shown}); "
                "rerun with --restart to start over, or set out_dir to a new folder")


def _git_sha() -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def new_manifest(cfg: RunConfig, assets: Assets, prints: dict) -> dict:
    return {
        "package": "cai-pipeline", "version": __version__, "git_sha": _git_sha(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "out_dir": cfg.out_dir,
        "model": cfg.model, "judge_model": cfg.judge.model or cfg.model, "seed": cfg.seed,
        "config": cfg.model_dump(), "constitution_sha256": assets.hashes["constitution"],
        "template_sha256": assets.hashes["templates"], "prompts_sha256": assets.hashes["prompts"],
        "fingerprints": prints, "stages": {},
    }


def check_token_limits(cfg: RunConfig, engine) -> None:
    """A max_tokens the context cannot hold is a config mistake, not something to clamp silently."""
    context = getattr(engine, "max_model_len", None)
    if context is None:  # a server that does not say
        return
    for key, value in (("sample.max_tokens", cfg.sample.max_tokens), ("revise.max_tokens", cfg.revise.max_tokens),
                       ("judge.reasoning_max_tokens", cfg.judge.reasoning_max_tokens)):
        if value >= context:
            raise UserError(f"{key}={value} does not fit the model's context of {context} tokens; "
                            f"lower it (or raise engine.max_model_len if the model allows)")


class Engines:
    """Builds engines on first use (a finished run resumes without starting one), one at a time.
    A caller may hand in a ready engine (tests share one per session); it serves every role and stays open."""

    def __init__(self, cfg: RunConfig, given=None):
        self.cfg = cfg
        self.given = given
        self.role: str | None = None
        self.engine = None
        self.stats: dict[str, dict] = {}

    def model_for(self, role: str) -> str:
        return (self.cfg.judge.model or self.cfg.model) if role == "judge" else self.cfg.model

    def get(self, role: str):
        if self.given is not None:
            return self.given
        if self.engine is not None and self.model_for(role) == self.model_for(self.role):
            return self.engine
        self.close()
        from cai_pipeline.engines import make_engine

        self.engine, self.role = make_engine(self.cfg, model=self.model_for(role)), role
        check_token_limits(self.cfg, self.engine)
        return self.engine

    def close(self) -> None:
        if self.engine is not None:
            s = self.engine.stats
            self.stats[self.role] = {"retries": s.retries, "errors": dict(s.errors)}
            self.engine.close()
            self.engine = None


def _shard_count(store: RunStore, spec: StageSpec, inputs: tuple[str, ...], n_prompt_shards: int) -> int:
    if inputs[0] == "prompts":
        return n_prompt_shards
    done = store.shard_indices(inputs[0])
    return (max(done) + 1) if done else 0


def _read_inputs(store: RunStore, inputs: tuple[str, ...], shard: int, prompt_shards: list[list[dict]]):
    out = {}
    for name in inputs:
        if name == "prompts":
            out[name] = prompt_shards[shard]
        elif not store.has_shard(name, shard):
            raise UserError(f"stage input {name}/part-{shard:05d}.parquet is missing in {store.root}; "
                            f"run --stages {name} first (or the whole pipeline)")
        else:
            out[name] = store.read_shard(name, shard)
    return out


def _shard_stats(result: StageResult, n_in: int, seconds: float, tokens: int) -> dict:
    return {"in": n_in, "out": len(result.rows), "rejected": dict(Counter(r["reason"] for r in result.rejects)),
            "counts": dict(result.counts), "seconds": round(seconds, 3), "output_tokens": tokens}


def summarise_stage(store: RunStore, name: str, total_shards: int) -> dict:
    stats = store.shard_stats(name)
    total: dict = {"shards_done": len(stats), "shards_total": total_shards, "in": 0, "out": 0,
                   "rejected": Counter(), "counts": Counter(), "seconds": 0.0, "output_tokens": 0}
    for s in stats:
        for key in ("in", "out", "seconds", "output_tokens"):
            total[key] += s.get(key, 0)
        total["rejected"].update(s.get("rejected", {}))
        total["counts"].update(s.get("counts", {}))
    total["rejected"], total["counts"] = dict(total["rejected"]), dict(total["counts"])
    total["seconds"] = round(total["seconds"], 2)
    return total


def run_stage(spec: StageSpec, cfg: RunConfig, store: RunStore, assets: Assets, engines: Engines,
              manifest: dict, bar) -> None:
    module = importlib.import_module(f"cai_pipeline.stages.{spec.name}")
    inputs = stage_inputs(spec, cfg)
    prompt_shards = [assets.prompts.rows[i : i + cfg.shard_size]
                     for i in range(0, len(assets.prompts.rows), cfg.shard_size)]
    n_shards = _shard_count(store, spec, inputs, len(prompt_shards))
    task = bar.add_task(spec.name, total=n_shards, unit="shards", rate="")
    for shard in range(n_shards):
        if store.has_shard(spec.name, shard):
            bar.advance(task)
            continue
        data = _read_inputs(store, inputs, shard, prompt_shards)
        engine = engines.get(spec.engine) if spec.engine else None
        tokens_before = engine.stats.output_tokens if engine else 0
        start = time.perf_counter()
        ctx = StageContext(seed=cfg.seed, shard=shard, cfg=cfg, constitution=assets.constitution,
                           templates=assets.templates)
        result = module.run(data, engine, ctx)
        seconds = time.perf_counter() - start
        tokens = (engine.stats.output_tokens - tokens_before) if engine else 0
        stats = _shard_stats(result, len(data[inputs[0]]), seconds, tokens)
        store.write_shard(spec.name, shard, result.rows, spec.record, result.rejects, stats)
        manifest["stages"][spec.name] = summarise_stage(store, spec.name, n_shards)
        manifest["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        store.write_manifest(manifest)
        bar.update(task, advance=1, rate=f"{tokens / seconds:.0f} tok/s" if tokens else "")
    manifest["stages"][spec.name] = summarise_stage(store, spec.name, n_shards)


def check_inputs(names: list[str], cfg: RunConfig, store: RunStore, manifest: dict) -> None:
    """A stage run on its own needs its inputs whole on disk; say which stage to run first."""
    for name in (s for s in SHARDED if s in names):
        for needed in stage_inputs(SPECS[name], cfg):
            if needed == "prompts" or needed in names:
                continue
            done = len(store.shard_indices(needed))
            total = manifest.get("stages", {}).get(needed, {}).get("shards_total", 0)
            if done == 0 or done < total:
                state = "is missing" if done == 0 else f"is incomplete ({done}/{total} shards)"
                raise UserError(f"stage {name} needs {needed}/ which {state} in {store.root}; "
                                f"run --stages {needed} first (or the whole pipeline)")


def snapshot_constitution(store: RunStore, cfg: RunConfig) -> None:
    """Keep the exact constitution the run used beside its data, so `cai compare` can diff two runs' rules
    even after the file has been edited."""
    source = resolve_resource(cfg.constitution)
    atomic_write_text(store.root / "constitution.yaml", source.read_text(encoding="utf-8"))


def _record_prompts(store: RunStore, assets: Assets, manifest: dict) -> None:
    write_parquet(store.rejects_path("prompts", 0), assets.prompts.rejects, records.RejectRecord)
    manifest["prompts"] = {"source": assets.prompts.source, "kept": len(assets.prompts.rows),
                           "rejected": dict(Counter(r["reason"] for r in assets.prompts.rejects))}


def _post_stages(names: list[str], cfg: RunConfig, store: RunStore, assets: Assets, manifest: dict) -> None:
    if "export" in names:
        from cai_pipeline.stages.export import export

        manifest["export"] = export(store, cfg, assets.constitution)
        store.write_manifest(manifest)
    if "train" in names:
        from cai_pipeline.train.loop import train

        manifest["train"] = train(cfg)
        store.write_manifest(manifest)


def run_pipeline(cfg: RunConfig, *, stages: list[str] | None = None, restart: bool = False,
                 config_path: str | None = None, engine=None) -> dict:
    quiet_libraries()
    names = stages or cfg.stages
    unknown = [s for s in names if s not in (*SHARDED, "export", "train")]
    if unknown:
        raise UserError(f"--stages: unknown stage {unknown[0]!r}; stages are sample,revise,pairs,judge,export,train")
    store = RunStore(cfg.out_dir)
    store.check_writable()
    with store.lock():
        return _run_locked(cfg, store, names, restart, engine)


def _run_locked(cfg: RunConfig, store: RunStore, names: list[str], restart: bool, engine) -> dict:
    if restart:
        store.clear()
    assets = load_assets(cfg)
    prints = fingerprints(cfg, assets)
    manifest = store.read_manifest()
    check_resume(store, manifest, prints)
    manifest = manifest or new_manifest(cfg, assets, prints)
    manifest["fingerprints"] = prints
    check_inputs(names, cfg, store, manifest)
    _record_prompts(store, assets, manifest)
    snapshot_constitution(store, cfg)
    engines = Engines(cfg, given=engine)
    try:
        with progress() as bar:
            for name in (s for s in SHARDED if s in names):
                run_stage(SPECS[name], cfg, store, assets, engines, manifest, bar)
    finally:
        engines.close()
        manifest["engine_stats"] = {**manifest.get("engine_stats", {}), **engines.stats}
        store.write_manifest(manifest)
    _post_stages(names, cfg, store, assets, manifest)
    manifest["outputs"] = [f"{p}" for p in _outputs(store)]
    store.write_manifest(manifest)
    print_summary(manifest)
    return manifest


def _outputs(store: RunStore) -> list[Path]:
    wanted = ["datasets/sft", "datasets/preferences", "datasets/README.md", "checkpoint", "rejects", "manifest.json"]
    return [store.root / w for w in wanted if (store.root / w).exists()]
