"""Fingerprints: the settings and inputs that shape each stage's output, recorded in the manifest.

A run folder made with other settings is refused (with the keys that differ) rather than resumed, because
mixing shards from two configurations would silently corrupt the datasets. A sharded stage's fingerprint is
its own settings plus everything upstream of it; a run-scope stage's is its settings plus what it read.
"""

from __future__ import annotations

import hashlib
import json

from cai_pipeline.errors import UserError

# engine keys that change how requests are sent, never what comes back
OPERATIONAL = {"concurrency", "max_retries", "timeout_s", "api_key_env"}
# Templates no sharded stage renders (the audit's; its own identity records every template): editing one must
# not make a run refuse to resume its shards.
RUN_SCOPE_TEMPLATES = frozenset({"refusal.j2", "violation.j2"})


# The manifest's key for each asset a stage's `content` names (stages/base.py).
CONTENT_KEYS = {"prompts": "prompts_sha256", "constitution": "constitution_sha256", "templates": "templates"}


def content_sha256(obj) -> str:
    """sha256 of any JSON-able value, key order aside: the same content always hashes the same."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def shard_fingerprints(cfg, hashes: dict, stages) -> dict[str, dict]:
    """Per sharded stage: the settings and content that shape its output, including everything upstream of it.
    `hashes`: the assets' hashes (assets.Assets.hashes); `stages`: the stage list, in order."""
    dump = cfg.model_dump()
    dump["engine"] = {k: v for k, v in dump["engine"].items() if k not in OPERATIONAL}
    hashes = {**hashes, "templates": {k: v for k, v in hashes["templates"].items() if k not in RUN_SCOPE_TEMPLATES}}
    out, upstream = {}, {}
    for stage in stages:
        if stage.scope != "shard":
            continue
        content = {CONTENT_KEYS[name]: hashes[name] for name in stage.content}
        upstream = {**upstream, **{k: dump[k] for k in stage.settings}, **content}
        out[stage.name] = dict(upstream)
    return out


def run_fingerprint(cfg, settings: tuple[str, ...], identity: dict) -> dict:
    """A run-scope stage: its own settings (config sections) and the identity of what it reads."""
    dump = cfg.model_dump()
    return {"settings": {k: dump[k] for k in settings}, "inputs": identity}


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def first_keys(keys: list[str]) -> str:
    """The first four changed keys, for a one-line message."""
    return ", ".join(keys[:4]) + (" …" if len(keys) > 4 else "")


def check_resume(store, manifest: dict | None, prints: dict[str, dict]) -> None:
    """Refuse to mix shards made under different settings; say which settings differ."""
    if not manifest:
        return
    for name, new in prints.items():
        old = manifest.get("fingerprints", {}).get(name)
        if old is None or not store.shard_indices(name):
            continue
        changed = changed_keys(old, new)
        if changed:
            raise UserError(
                f"{store.root} was made with different settings for stage {name!r} ({was(changed, old, new)}); "
                "give the run's values to go on with it, or set out_dir to a new folder (--restart would delete "
                "every shard it made)")


def _at(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def was(keys: list[str], old: dict, new: dict) -> str:
    """`sample.n: 2 in the run, 3 now, …` for the first keys: what to set to go on with the run."""
    shown = [f"{k}: {json.dumps(_at(old, k), default=str)} in the run, {json.dumps(_at(new, k), default=str)} now"
             for k in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")
