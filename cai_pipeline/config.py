"""Run configuration: pydantic models (extra="forbid"), YAML files and dotted `key=value` overrides.

Every problem a user can make here ends in one line naming the file, the key and the fix (a `UserError`).
The config reference in README.md documents each field; keep the two in step.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cai_pipeline.bundled import PROJECT_ROOT, RESOURCES, resolve_resource
from cai_pipeline.errors import UserError
from cai_pipeline.train.config import TrainConfig
from cai_pipeline.yamlio import dotted, parse, syntax_problem

__all__ = ["PROJECT_ROOT", "RESOURCES", "RunConfig", "load_config", "resolve_resource"]



class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_or_more(value: Any) -> Any:
    """`sample.stop=END` means one stop string: a list of one."""
    return [value] if isinstance(value, str) else value


def _no_empty_stop(stops: list[str]) -> list[str]:
    """An empty stop string matches at once and empties every response (`sample.stop=$UNSET` in a shell)."""
    if any(s == "" for s in stops):
        raise ValueError("an empty stop string would end every response before its first word; give the text to "
                         "stop at, or sample.stop=[] for none")
    return stops


def _url(value: str | None) -> str | None:
    """A server address, checked now rather than when the run first connects (after hours of other stages)."""
    if value is None:
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("not a server URL; give http(s)://host:port, e.g. http://127.0.0.1:8000/v1")
    return value


Url = Annotated[str | None, AfterValidator(_url)]
# numpy, torch and vLLM take 32-bit unsigned seeds: a larger one passes here and fails hours later in training
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class EngineConfig(Strict):
    kind: Literal["auto", "vllm", "hf", "openai"] = Field("auto", description="auto: vllm where installed, else hf")
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="weights and activations")
    max_model_len: int | None = Field(None, gt=0, description="context length; default min(model's, 4096)")
    batch_size: int = Field(16, gt=0, description="hf: sequences per forward pass")
    trust_remote_code: bool = Field(False, description="run code shipped with the model (warns when on)")
    row_seeds: bool = Field(False, description="seed every request by its row's ids (hf: one row at a time, so a "
                            "row recomputed by --reuse equals a from-scratch one; vllm: per-request seeds with "
                            "chunked prefill off, reproducible but still batch-dependent; docs/reuse.md)")
    fp32_head: bool = Field(True, description="score choices (the judge) with an fp32 output projection: "
                            "log-probs without bf16 quantisation (~0.1 nat here), the same on every engine; "
                            "sampling keeps the model's head")
    # vLLM
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM on GPU: share of memory to use")
    tensor_parallel_size: int = Field(1, gt=0, description="vLLM: GPUs per model")
    kv_cache_gb: float = Field(2, gt=0, description="vLLM on CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE)")
    block_size: int | None = Field(None, gt=0, description="vLLM: KV-cache block in tokens; the prefix cache shares "
                                   "whole blocks; default vLLM's (16 on GPU, 128 on CPU, where it wants multiples of 32)")
    # OpenAI-compatible server
    base_url: Url = Field(None, description="openai: server URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    served_model: str | None = Field(None, description="model name on the server; default: `model`")
    concurrency: int = Field(16, gt=0, description="openai: requests in flight at once")
    max_retries: int = Field(5, ge=0, description="openai: retries on 429/5xx/timeouts before a row is rejected")
    timeout_s: float = Field(120, gt=0, description="openai: seconds per request")
    batch: bool = Field(False, description="openai: send each stage's requests as one OpenAI Batch API job (/v1/files, "
                        "/v1/batches): half price and higher limits on hosted APIs, results within the window; a "
                        "killed run resumes the batch (docs/scale-out.md)")
    batch_poll_s: float = Field(30, gt=0, description="openai batch: seconds between status checks")
    batch_window: str = Field("24h", description="openai batch: completion_window asked of the server")
    price_in_per_mtok: float | None = Field(None, ge=0, description="`cai plan`: price per million input tokens "
                                            "(unset: cost unknown)")
    price_out_per_mtok: float | None = Field(None, ge=0, description="`cai plan`: price per million output tokens")
    batch_discount: float = Field(0.5, ge=0, lt=1, description="`cai plan`: share taken off the price in batch mode")


class PromptsConfig(Strict):
    path: str | None = Field(None, description="JSONL/Parquet/CSV file; default: the bundled prompt set")
    format: Literal["auto", "jsonl", "parquet", "csv", "hh-rlhf"] = Field("auto", description="auto: by file name")
    limit: int | None = Field(None, gt=0, description="use the first N prompts (after de-duplication)")
    system_prompt: str | None = Field(None, description="prepended as a system message to every prompt")
    part: int | None = Field(None, ge=0, description="use only part `part` of `parts` (by hashed prompt_id, after "
                             "limit): disjoint prompt sets for rounds or jobs")
    parts: int = Field(1, gt=0, description="how many parts `part` counts from")
    near_duplicates: float | None = Field(0.8, gt=0, le=1, description="word n-gram Jaccard similarity at or "
                                          "above which a prompt is a near-duplicate of an earlier one (rejects: "
                                          "near_duplicate, naming it); null: keep them")
    near_duplicate_n: int = Field(3, ge=1, description="the n of near_duplicates' word n-grams")

    @model_validator(mode="after")
    def _part_in_range(self) -> PromptsConfig:
        if self.part is not None and self.part >= self.parts:
            raise ValueError(f"part {self.part} is not below parts {self.parts}; parts are numbered from 0")
        return self


class SampleConfig(Strict):
    n: int = Field(2, gt=0, description="responses per prompt")
    temperature: float = Field(0.8, ge=0, description="0 is greedy")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(256, gt=0, description="per response")
    stop: Annotated[list[str], BeforeValidator(_one_or_more), AfterValidator(_no_empty_stop)] = Field(
        [], description="stop strings (not kept in the text); one string or a list")


class ReviseConfig(Strict):
    rounds: int = Field(2, ge=1, description="critique→revision rounds per response (the CAI paper used 4)")
    few_shot: int = Field(1, ge=0, description="few-shot examples shown before each critique/revision")
    temperature: float = Field(0.7, ge=0, description="for critiques and revisions")
    top_p: float = Field(0.95, gt=0, le=1, description="for critiques and revisions")
    max_tokens: int = Field(256, gt=0, description="per critique and per revision")
    mode: Literal["auto", "chains", "rounds"] = Field(
        "auto", description="chains: each row's steps run as soon as its last finished; rounds: one batch per step"
    )
    revise_passing: bool = Field(True, description="revise a response that already passes the drawn principle's "
                                 "check anyway; false: that round is skipped and recorded as such")


class PairsConfig(Strict):
    sampled: bool = Field(True, description="pairs of two samples of the same prompt")
    max_sampled_per_prompt: int | None = Field(None, gt=0, description="default: all pairs for n ≤ 4, else n")
    revision: bool = Field(True, description="final revision vs initial response")


class JudgeConfig(Strict):
    model: str | None = Field(None, description="judge model; default: the run's model")
    principles: int = Field(2, gt=0, description="principles drawn per pair; verdicts are averaged")
    reasoning: bool = Field(False, description="chain of thought first; probabilities clamped to [0.4, 0.6]")
    reasoning_max_tokens: int = Field(128, gt=0, description="length of the judge's reasoning")
    min_margin: float = Field(0.05, ge=0, lt=0.5, description="|p − 0.5| below this → rejects (below_margin)")
    drop_inconsistent: bool = Field(True, description="pairs whose two orders pick the same position → rejects")
    check_confidence: float = Field(0.95, gt=0.5, le=1, description="a checkable principle's verdict on a pair its "
                                    "check separates (one passes, one fails), in both orders; no model call")
    layout: Literal["question_first", "shared_prefix"] = Field(
        "question_first", description="judge prompt: question before the responses, or conversation and both "
        "responses first so a pair's principles share one prefix (see docs/judge.md)")


class ExportConfig(Strict):
    test_fraction: float = Field(0.1, ge=0, lt=1, description="share of prompts held out as the test split")
    drop_truncated: bool = Field(True, description="rows whose response hit max_tokens go to rejects (truncated): "
                                 "training on an unfinished text teaches the model to end mid-sentence; every row "
                                 "carries the flag either way")


class ExecutorConfig(Strict):
    kind: Literal["local", "ray"] = Field("local", description="local: shards one after another in this process; "
                                          "ray: on a pool of engine actors (Ray Data), see docs/scale-out.md")
    address: str | None = Field(None, description="ray: the cluster; default: start a local Ray instance, `auto`: "
                                "the cluster this machine belongs to, `ray://host:10001`: a remote one")
    actors: int | list[int] = Field(1, description="ray: engine replicas, a fixed number or [min, max] for "
                                          "an autoscaling pool")
    cpus_per_actor: float = Field(1, gt=0, description="ray: CPUs each actor reserves (on CPU also its torch "
                                  "threads, which shape sampled text: docs/scale-out.md)")
    gpus_per_actor: float = Field(0, ge=0, description="ray: GPUs each actor reserves; vLLM needs "
                                  "engine.tensor_parallel_size of them")
    shard_retries: int = Field(3, ge=0, description="ray: times a shard is retried when its actor dies (Ray "
                               "restarts the actor); then the stage reports it and the others finish")
    stall_timeout_s: float = Field(1800, description="ray: a stage in which no shard finishes for this long "
                                   "stops and names its unfinished shards (a dead actor can stall Ray Data's pool: "
                                   "docs/scale-out.md); raise it above your slowest shard; -1: never")

    @field_validator("stall_timeout_s")
    @classmethod
    def _stall(cls, seconds: float) -> float:
        if seconds <= 0 and seconds != -1:
            raise ValueError("give seconds > 0, or -1 for no limit")
        return seconds

    @field_validator("actors")
    @classmethod
    def _pool(cls, actors: int | list[int]) -> int | list[int]:
        low, high = (actors, actors) if isinstance(actors, int) else (actors + [0, 0])[:2]
        if not 1 <= low <= high or isinstance(actors, list) and len(actors) != 2:
            raise ValueError("give a number ≥ 1, or [min, max] with 1 ≤ min ≤ max such as [1, 8]")
        return actors


class AuditJudgeConfig(Strict):
    model: str | None = Field(None, description="judge model; default: judge.model, else the run's model")
    url: Url = Field(None, description="serve the judge through the openai engine at this URL")
    layout: Literal["question_first", "shared_prefix"] = Field(
        "question_first", description="question_first: the judge stage's layout; shared_prefix: a pair's principles "
        "share one prefix (vLLM computes it once: 3.27x faster, less accurate on the embedded judge, BENCHMARKS.md)")
    reasoning: bool = Field(False, description="chain of thought first; probabilities clamped to [0.4, 0.6]")
    reasoning_max_tokens: int = Field(128, gt=0, description="length of the judge's reasoning")


class AuditConfig(Strict):
    model: str | None = Field(None, description="the model audited: `embedded`, a folder, or a served name "
                              "(with model_url); default: the run's checkpoint")
    model_url: Url = Field(None, description="serve `model` through the openai engine at this URL")
    baseline: str | None = Field(None, description="what it is compared with; default: the model the run "
                                 "started from (train.model, else model)")
    baseline_url: Url = Field(None, description="serve `baseline` through the openai engine at this URL")
    prompts: str | None = Field(None, description="JSONL/Parquet/CSV with prompt (or messages) and an optional "
                                "tag (harmful, benign), or a run folder: the prompts its audit used; default: the "
                                "run's held-out test prompts + the bundled audit set")
    limit: int | None = Field(None, gt=0, description="audit N of the prompts: held-out ones first, then each "
                              "tag in proportion, by hashed id (the same N every run)")
    n: int = Field(1, gt=0, description="responses per prompt and model")
    temperature: float = Field(0.8, ge=0, description="sampling temperature of both models")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling for both models")
    max_tokens: int = Field(256, gt=0, description="per response")
    principles: list[str] | None = Field(None, description="principle ids to judge; default: every principle")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples of the prompts for each CI")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="level of the confidence intervals")
    refusal: bool = Field(True, description="ask the judge whether each response declines (prompts/refusal.j2)")
    responses: str | None = Field(None, description="read the audited side from this log (JSONL/Parquet/CSV of "
                                  "conversations, docs/audit.md) instead of generating; alone (no baseline, "
                                  "baseline_responses) it is a pointwise audit")
    baseline_responses: str | None = Field(None, description="read the baseline side from this log instead of "
                                           "generating (two logs: drift per principle)")
    compliance: bool | None = Field(None, description="per principle, the judge's P(violates) of each response "
                                    "(prompts/violation.j2); default: on when a side is a log")
    worst: int = Field(5, ge=0, description="compliance: the responses most likely to violate, kept per principle")
    decontaminate: Literal["drop", "flag", "off"] = Field(
        "drop", description="audit prompts sharing an n-gram with a training prompt or an eval file: dropped, "
        "flagged (kept, counted), or not checked")
    decontaminate_n: int = Field(8, ge=1, description="the n of decontamination's word n-grams (8: Tulu 3, open-r1)")
    eval_files: list[str] = Field([], description="prompt files (JSONL/Parquet/CSV) the audit's prompts must not "
                                  "overlap, besides the run's training prompts")
    @field_validator("decontaminate", mode="before")
    @classmethod
    def _off(cls, value):
        return "off" if value is False else value  # YAML reads a bare `off` as false

    implicit_reward: bool = Field(True, description="for a DPO/IPO checkpoint: its implicit-reward accuracy on the "
                                  "run's held-out preference pairs, and the base model's")
    helpfulness_tags: list[str] = Field(["helpfulness", "anti-preachiness"], description="principles with one "
                                        "of these tags form the helpfulness axis; other tagged ones harmlessness")
    judge: AuditJudgeConfig = AuditJudgeConfig()


class IterateConfig(Strict):
    rounds: int = Field(2, ge=1, description="`cai iterate`: RL rounds after the SL round (rounds/00-sl, "
                        "rounds/01-rl, ...), each from the previous round's checkpoint")
    prompts: Literal["slices", "reseed"] = Field("slices", description="slices: each round its own disjoint part "
                                                 "of the prompts; reseed: every round all prompts, a new seed")
    reference: Literal["previous", "sl"] = Field("previous", description="DPO/IPO reference of an RL round: the "
                                                 "previous round's model, or the SL round's")
    gate: bool = Field(True, description="after each RL round, stop unless its length-controlled win rate over "
                       "the previous round is above 0.5 by its CI and length grew at most max_length_growth")
    max_length_growth: float = Field(0.10, ge=0, description="gate: largest allowed relative growth of the mean "
                                     "response length over the previous round (0.10: 10%)")
    gate_checks: list[str] = Field([], description="gate: checkable principles whose pass rate must not fall "
                                   "(stop when the audit's difference against the previous round is below 0 by "
                                   "its whole interval)")
    audit_base: bool = Field(True, description="also audit each RL round's model against the base model "
                             "(vs-base/NN-rl/); the gate reads the audit against the previous round")


class RunConfig(Strict):
    out_dir: str = Field(min_length=1, description="the run folder; running again resumes it")
    seed: Seed = Field(0, description="every random choice derives from it and the row's ids")
    model: str = Field("embedded", description="`embedded`, a local Hugging Face folder, or a hub id")
    constitution: str = Field("constitutions/harmless.yaml", description="constitution YAML")
    stages: list[str] = Field(["sample", "revise", "pairs", "judge", "export"], min_length=1,
                              description="the stages to run (`cai run --help` lists them), in pipeline order whatever "
                              "the order given")
    shard_size: int = Field(64, gt=0, description="prompts per shard: the unit of resume")
    reuse: str | None = Field(None, description="an earlier run folder (`cai run --reuse`): rows whose content "
                              "keys match are copied from it, the rest computed; it is only read (docs/reuse.md)")
    engine: EngineConfig = EngineConfig()
    prompts: PromptsConfig = PromptsConfig()
    sample: SampleConfig = SampleConfig()
    revise: ReviseConfig = ReviseConfig()
    pairs: PairsConfig = PairsConfig()
    judge: JudgeConfig = JudgeConfig()
    export: ExportConfig = ExportConfig()
    train: TrainConfig = TrainConfig()
    executor: ExecutorConfig = ExecutorConfig()
    audit: AuditConfig = AuditConfig()
    iterate: IterateConfig = IterateConfig()

    @model_validator(mode="after")
    def _known(self) -> RunConfig:
        if not self.out_dir.strip():
            raise ValueError("out_dir must name a folder, e.g. out_dir=outputs/try (empty would mean the current one)")
        if self.engine.batch and self.engine.kind != "openai":
            raise ValueError(f"engine.batch needs engine.kind=openai (a server with the OpenAI Batch API), not "
                             f"{self.engine.kind}; set engine.kind=openai or engine.batch=false")
        gpus, tp = self.executor.gpus_per_actor, self.engine.tensor_parallel_size
        if self.executor.kind == "ray" and gpus and tp > gpus:
            raise ValueError(f"executor.gpus_per_actor={gpus:g} is fewer than engine.tensor_parallel_size={tp}: "
                             f"each actor's vLLM needs {tp} GPUs; set executor.gpus_per_actor={tp}")
        return self


def _default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    return "—" if isinstance(value, BaseModel) else f"`{json.dumps(value, default=str)}`"


def reference_rows(model: type[BaseModel] = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, description) for every config key, sections flattened to dotted keys."""
    rows = []
    for name, field in (model or RunConfig).model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            rows += reference_rows(sub, f"{prefix}{name}.")
        else:
            rows.append((prefix + name, _default_text(field), field.description or ""))
    return rows


def reference_markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | {d} | {m.replace('|', chr(92) + '|')} |" for k, d, m in reference_rows()]
    return "\n".join(lines)


def load_yaml(path: Path) -> Any:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; name a config YAML file, e.g. configs/demo.yaml")
    if not path.exists():
        raise UserError(f"{path}: file not found; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the YAML
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        _, data, repeated = parse(text)
    except yaml.YAMLError as e:
        line, problem = syntax_problem(e)
        raise UserError(f"{path}:{line}: YAML syntax error: {problem}") from None
    if repeated:
        line, loc, message = repeated[0]
        raise UserError(f"{path}:{line}: {dotted(loc)}: {message}")
    return data


def apply_override(data: dict, item: str) -> None:
    """`a.b.c=value` → data["a"]["b"]["c"] = yaml-parsed value (so 4 is an int, true a bool, [x] a list)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r}: expected key=value, e.g. prompts.limit=4")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    if value is None and raw.lstrip().startswith("#"):
        raise UserError(f"override {item!r}: YAML reads a value starting with '#' as a comment, so it is empty; "
                        f"quote it: {key}='\"{raw}\"'")
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys.extend(_known_keys(sub, f"{prefix}{name}."))
    return keys


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """The first problem as `source: key: message (fix)`; unknown keys get the nearest valid key."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "(top level)"
    if e["type"] == "extra_forbidden":
        near = difflib.get_close_matches(key, _known_keys(model), n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else "; see the config reference in README.md"
        return f"{source}: unknown key {key!r}{hint}"
    if e["type"] == "missing":
        return f"{source}: {key}: required, add it to the file or pass {key}=..."
    got = e.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    if got is None and e["type"] != "missing":  # `stop: ###` is an empty value: YAML took the rest as a comment
        shown += "; an empty value, or one starting with '#' (a YAML comment): quote it"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {e['msg'].removeprefix('Value error, ')}{shown}{more}"


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    data: Any = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        data = load_yaml(Path(path)) or {}
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of config keys at the top level")
    given: dict[str, str] = {}  # key → the override that set it
    for item in overrides:
        apply_override(data, item)
        key = item.partition("=")[0]
        if key in given:  # the shell kept both; silently using the last hides a typo or a stale line
            raise UserError(f"override {item!r}: {key!r} is already given ({given[key]!r}); keep one of the two")
        given[key] = item
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, _blame(err, given, source), RunConfig)) from None


def _blame(err: ValidationError, given: dict[str, str], source: str) -> str:
    """Where the first problem came from: the override that set its key (or a section above it), else the file."""
    loc = [str(p) for p in err.errors()[0]["loc"]]
    for n in range(len(loc), 0, -1):
        item = given.get(".".join(loc[:n]))
        if item is not None:
            return f"override {item!r}"
    return source
