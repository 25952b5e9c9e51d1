"""Randomness keyed by ids, never by position: a row's choices do not depend on batch size, shard boundaries,
resume, or engine. vLLM changes global RNG state, so nothing here touches the global `random`."""

from __future__ import annotations

import hashlib
import random


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any keys, stable across processes and Python versions."""
    text = "\x1f".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def rng_for(seed: int, *keys: object) -> random.Random:
    return random.Random(derive_seed(seed, *keys))


def stable_id(*parts: object, length: int = 16) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:length]
