"""Word n-grams of prompts: overlap (decontamination) and near-duplicates (Jaccard). Pure functions, no model.

Words are lower-cased `\\w+` runs, so punctuation and case never hide an overlap. A text shorter than n words
has one gram, its whole word sequence: it overlaps only an identical short text.

**Overlap** (the audit's decontamination): a prompt is contaminated when it shares one word n-gram with a
reference text (n = 8, as Tulu 3 and open-r1 decontaminate). The smaller side, the prompts checked, is indexed
by hashed gram; the reference texts stream past it, so memory grows with the checked prompts, not with the
reference set.

**Near-duplicates** (prompts before sampling): Jaccard similarity of the texts' word n-gram sets at or above a
threshold t. Exact, not approximate (no MinHash): candidates come from *prefix filtering* (Bayardo, Ma, Srikant
2007, "Scaling up all pairs similarity search", WWW): with every set's grams sorted rarest first, two sets with
J ≥ t share a gram among the first |x| − ⌈t·|x|⌉ + 1 of each, and their sizes are within a factor t (the
length bound). Only those candidates are compared in full.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def gram_hashes(text: str, n: int) -> set[int]:
    """Hashes of the text's word n-grams (its whole word sequence when shorter than n; none when empty)."""
    w = words(text)
    if len(w) < n:
        return {hash(tuple(w))} if w else set()
    return {hash(tuple(w[i:i + n])) for i in range(len(w) - n + 1)}


def prompt_text(messages: list[dict]) -> str:
    """What a prompt asks: its user turns. System prompts are left out: one shared system prompt would make
    every prompt overlap every other."""
    return "\n".join(m["content"] for m in messages if m["role"] == "user")


def overlaps(checked: list[str], reference: Iterable[str], n: int) -> dict[int, int]:
    """{index in `checked`: index of the first reference text sharing a word n-gram with it}."""
    index: dict[int, list[int]] = {}
    for i, text in enumerate(checked):
        for g in gram_hashes(text, n):
            index.setdefault(g, []).append(i)
    found: dict[int, int] = {}
    for j, text in enumerate(reference):
        for g in gram_hashes(text, n):
            for i in index.get(g, ()):
                found.setdefault(i, j)
        if len(found) == len(checked):
            break  # every checked prompt already overlaps: the rest cannot change the answer
    return found


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(texts: list[str], threshold: float, n: int) -> dict[int, int]:
    """{index of a text: index of the earlier kept text it is a near-duplicate of}, in order: a text is kept
    unless its word n-gram Jaccard with a kept earlier text is at least `threshold`."""
    sets = [gram_hashes(t, n) for t in texts]
    freq = Counter(g for s in sets for g in s)
    index: dict[int, list[int]] = {}  # gram → kept texts with it in their prefix
    dupes: dict[int, int] = {}
    for i, s in enumerate(sets):
        if not s:
            continue
        ordered = sorted(s, key=lambda g: (freq[g], g))  # rarest first: short candidate lists
        prefix = ordered[: len(s) - math.ceil(threshold * len(s) - 1e-9) + 1]  # 0.7·10 is 7.000…1 in floats
        seen: set[int] = set()
        for g in prefix:
            for j in index.get(g, ()):
                if j in seen:
                    continue
                seen.add(j)
                if threshold * len(s) <= len(sets[j]) <= len(s) / threshold and jaccard(s, sets[j]) >= threshold:
                    dupes[i] = j if i not in dupes else min(dupes[i], j)
        if i not in dupes:
            for g in prefix:
                index.setdefault(g, []).append(i)
    return dupes
