"""Randomness keyed by ids, never by position: a row's choices do not depend on batch size, shard boundaries,
resume, or engine. vLLM changes global RNG state, so nothing here touches the global `random`."""

from __future__ import annotations

import hashlib
import math
import random


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any keys, stable across processes and Python versions."""
    text = "\x1f".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def rng_for(seed: int, *keys: object) -> random.Random:
    return random.Random(derive_seed(seed, *keys))


def stable_id(*parts: object, length: int = 16) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:length]


def race_key(seed: int, keys: tuple, item_id: str, weight: float) -> float:
    """One item's key in a weighted race (Efraimidis & Spirakis, "Weighted random sampling with a reservoir",
    Inf. Process. Lett. 97(5), 2006, doi:10.1016/j.ipl.2005.11.003): log(u) / weight with u uniform in (0, 1)
    from a hash of (seed, keys, item id). The largest keys are a weighted sample without replacement.

    Each item's key depends on its own id and weight only, never on the other items or their texts (weighted
    rendezvous hashing): editing an item's text moves no draw, and adding an item changes exactly the draws
    its key wins."""
    u = (derive_seed(seed, *keys, "race", item_id) + 0.5) / 2.0**63
    return math.log(u) / weight


def race_order(seed: int, keys: tuple, items: list[tuple[str, float]]) -> list[str]:
    """`items` (id, weight) ordered by their race keys, winner first."""
    return [i for _, i in sorted(((race_key(seed, keys, i, w), i) for i, w in items), reverse=True)]
