"""The judge probes: deterministic text transforms, each changing one response along one axis.

A probe compares the judge's preference for a *treated* response with its preference for a *control*, against
the same other response, under the same principles, asked in both orders. Most controls are the response
unchanged. The cue probes (caveat, authority, revised) add a sentence, and a judge that likes longer answers
would reward any sentence, so their control is the response with the same number of words of neutral filler
(the `verbosity` treatment): their shift is the cue's effect beyond its length, and `verbosity` is the length
effect itself. Every added text below has exactly FILLER_WORDS words (`words`, a count of \\w+ runs), which the
tests check, and none contains markdown.

| probe     | treatment                                               | control        | the bias it finds |
|-----------|---------------------------------------------------------|----------------|-------------------|
| position  | (no transform: the same pair's two orders)              |                | first-slot preference |
| verbosity | + a sentence of neutral filler                          | unchanged      | length |
| markdown  | the same sentences as a list, the first one bold        | unchanged      | formatting (arXiv 2409.11704) |
| caveat    | + a disclaimer                                          | + filler       | hedging |
| authority | + "experts agree" and a made-up citation                | + filler       | authority, fake references (arXiv 2402.10669) |
| revised   | a label saying it is a revision, before it              | + filler       | the "revised" label (CALM, arXiv 2410.02736) |
| refusal   | a polite refusal in place of the answer (benign prompts) | unchanged      | rewarding over-refusal |
| self      | another model's response to the prompt in its place     | unchanged      | self-preference (arXiv 2404.13076) |

`markdown` keeps every word (only `- ` and `**` are added), so a judge that counts words sees no change.
`refusal` and `self` change content, not just form: see docs/judge-check.md for what their shifts mean.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

FILLER = ("To put the same point another way, what has been said above is the answer, stated here once more in "
          "other words.")
CAVEAT = ("Please keep in mind that this is general information only, and it may not fit your situation; check "
          "with a qualified professional.")
AUTHORITY = ("Experts agree: this is the view of leading researchers in the field, and peer-reviewed studies "
             "confirmed it (Smith et al., 2021).")
REVISED = ("Revised response, rewritten after a careful critique of the first draft so that it now fixes all the "
           "problems the draft had:")
REFUSAL = ("I'm sorry, but I can't help with that request. If there is something else you would like to know, "
           "I'd be glad to help.")
FILLER_WORDS = 22

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> int:
    """Words as runs of letters and digits: markdown markers (`-`, `**`, `#`) are not words."""
    return len(_WORD.findall(text))


def _append(text: str, sentence: str) -> str:
    return f"{text.rstrip()} {sentence}"


def pad(text: str) -> str:
    """verbosity: the response and a sentence of filler that says nothing new."""
    return _append(text, FILLER)


def caveat(text: str) -> str:
    return _append(text, CAVEAT)


def authority(text: str) -> str:
    return _append(text, AUTHORITY)


def revised(text: str) -> str:
    return f"{REVISED}\n{text.lstrip()}"


def refusal(text: str) -> str:
    return REFUSAL


def markdown(text: str) -> str:
    """The same words as a markdown list, one item per sentence, the first item bold; a single sentence is bold."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    if len(sentences) < 2:
        return f"**{text.strip()}**"
    return "\n".join([f"- **{sentences[0]}**", *(f"- {s}" for s in sentences[1:])])


def unchanged(text: str) -> str:
    return text


@dataclass(frozen=True)
class Probe:
    """A text probe: `treat` and `control` map a response to the two texts compared; `direction` is which sign of
    the shift is a bias ("either", or "positive" where the treatment is worse on purpose and only a judge that
    prefers it is biased)."""

    name: str
    treat: Callable[[str], str]
    control: Callable[[str], str]
    direction: str = "either"


TEXT_PROBES = {p.name: p for p in (
    Probe("verbosity", pad, unchanged),
    Probe("markdown", markdown, unchanged),
    Probe("caveat", caveat, pad),
    Probe("authority", authority, pad),
    Probe("revised", revised, pad),
    Probe("refusal", refusal, unchanged, direction="positive"),
)}
# position reads the unchanged pairs' two orders; self puts another model's response in place of one.
PROBES = ("position", *TEXT_PROBES, "self")
