"""The judge probes against planted-bias judges (tests/planted_judge.py, a tiny OpenAI-compatible server): each
profile flags exactly the bias planted in it and none of the others; the transforms keep what they promise;
the flag rule on hand-made differences."""

from __future__ import annotations

import random

import numpy as np
import pytest

from cai_pipeline.bundled import resolve_resource
from cai_pipeline.constitution import load_constitution
from cai_pipeline.judge_check import probes
from cai_pipeline.judge_check.profile import CheckPair, Options, run_check, score, variants
from tests import planted_judge as planted

WORDS = "the cat sat on a mat and then it went to sleep near the warm fire while rain fell outside all night".split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 10))).capitalize() + "."


def make_pairs(n: int = 8, mark: str = "") -> list[CheckPair]:
    """n pairs over n/2 prompts, plain multi-sentence texts of 40+ words (longer than the refusal), no markdown."""
    rng = random.Random(7)
    text = lambda: mark + " ".join(sentence(rng) for _ in range(rng.randint(6, 9)))  # noqa: E731
    return [CheckPair(f"pair{i}", f"prompt{i // 2}", [{"role": "user", "content": f"Tell me about cats, part {i // 2}."}],
                      text(), text(), benign=True) for i in range(n)]


@pytest.fixture(scope="module")
def principles():
    return load_constitution(resolve_resource("constitutions/harmless.yaml")).principles


def profile(prefer, pairs, principles, **options):
    from cai_pipeline.engines import make_engine

    with planted.PlantedJudge(prefer) as judge:
        engine = make_engine(kind="openai", model=planted.MODEL, base_url=judge.url)
        try:
            summary = run_check(engine, pairs, principles, judge=planted.MODEL, source="test",
                                opts=Options(k=1, bootstrap=200, **options))
        finally:
            engine.close()
    assert summary.cost.judge_calls == judge.requests and summary.cost.failed == 0
    return summary


@pytest.mark.parametrize("prefer,bias", [(planted.longer, "verbosity"), (planted.markdown, "markdown"),
                                         (planted.first, "position")])
def test_a_planted_bias_is_flagged_and_nothing_else(prefer, bias, principles):
    summary = profile(prefer, make_pairs(), principles)
    assert summary.flagged() == [bias]
    row = summary.probes[bias]
    assert row.shift > 0.3 and row.ci_low > 0 and row.n == 8
    assert set(summary.probes) == {"position", "verbosity", "markdown", "caveat", "authority", "revised", "refusal"}
    assert "self" in summary.skipped  # no other model's responses were given
    for name, other in summary.probes.items():  # every other probe: no movement, since the cue is length-matched
        if name not in (bias, "refusal"):
            assert other.shift == 0 and not other.flagged, name
    # the flagged probe is flagged under each principle that was drawn, too
    assert all(rows[bias].flagged for rows in summary.principles.values() if rows[bias].n >= 2)


def test_a_refusal_is_a_bias_only_when_the_judge_prefers_it(principles):
    """A judge that likes longer answers dislikes the short refusal: a large negative shift, not a flag. A judge
    that likes the refusal is flagged."""
    summary = profile(planted.longer, make_pairs(), principles, probes=["refusal"])
    assert summary.probes["refusal"].shift < -0.3 and not summary.probes["refusal"].flagged
    likes = lambda a, b: planted._sigmoid(3 * ((a == probes.REFUSAL) - (b == probes.REFUSAL)))  # noqa: E731
    summary = profile(likes, make_pairs(), principles, probes=["refusal"])
    assert summary.probes["refusal"].shift > 0.3 and summary.flagged() == ["refusal"]


def test_self_preference_is_flagged_with_another_models_responses(principles):
    """The planted judge prefers texts with its own mark; the other model's responses are the same texts
    without it, so only the authorship changes."""
    pairs = make_pairs(mark=planted.SELF_MARK + " ")
    for p in pairs:
        p.other = p.a.removeprefix(planted.SELF_MARK + " ")
    summary = profile(planted.own, pairs, principles)
    assert summary.flagged() == ["self"] and summary.probes["self"].shift < -0.3
    assert summary.skipped == {}


def test_refusal_waits_for_benign_prompts(principles):
    pairs = make_pairs(4)
    for p in pairs:
        p.benign = False
    summary = profile(planted.longer, pairs, principles, probes=["verbosity", "refusal"])
    assert list(summary.probes) == ["verbosity"] and "benign" in summary.skipped["refusal"]


def test_each_probe_changes_either_side_and_keeps_its_promise():
    pair = make_pairs(2)[0]
    texts = variants(pair, probes.PROBES)
    for name in probes.TEXT_PROBES:
        assert texts[name, "a", "treat"][1] == pair.b and texts[name, "b", "treat"][1] == pair.a
        assert texts[name, "a", "treat"][0] != texts[name, "a", "control"][0]
    # the cue probes are length-matched against the filler; the markdown probe keeps every word
    assert {probes.words(t) for t in (probes.FILLER, probes.CAVEAT, probes.AUTHORITY, probes.REVISED)} == {
        probes.FILLER_WORDS}
    for name in ("caveat", "authority", "revised"):
        assert probes.words(texts[name, "a", "treat"][0]) == probes.words(texts[name, "a", "control"][0])
    md = probes.markdown(pair.a)
    assert md.splitlines()[0].startswith("- **") and probes.words(md) == probes.words(pair.a)
    assert probes.markdown("One sentence only") == "**One sentence only**"
    assert "self" not in {k[0] for k in texts}  # no other model's response: nothing to swap in


@pytest.mark.parametrize("values,direction,flagged", [
    ([0.0] * 6, "either", False),          # nothing moves: the interval is [0, 0], which holds 0
    ([0.1] * 6, "either", True),
    ([-0.1] * 6, "either", True),          # a judge that penalises a cue is as biased as one that rewards it
    ([0.03] * 6, "either", False),         # the interval excludes 0, but the shift is under the threshold
    ([0.4, -0.4] * 3, "either", False),    # a wide interval across 0
    ([-0.3] * 6, "positive", False),       # refusal: worse on purpose, so a judge that disprefers it is right
    ([0.3] * 6, "positive", True),
])
def test_the_flag_rule(values, direction, flagged):
    units = np.array(["p0", "p0", "p1", "p1", "p2", "p2"])
    weights = np.random.default_rng(0).multinomial(3, [1 / 3] * 3, size=300)[:, [0, 0, 1, 1, 2, 2]].astype(float)
    row = score(np.array(values), units, weights, Options(), direction)
    assert row.flagged is flagged and row.n == 6 and row.shift == pytest.approx(np.mean(values), abs=1e-4)
    assert row.ci_low <= row.shift <= row.ci_high


@pytest.mark.model
def test_the_embedded_judge_runs_the_probes(hf_engine, principles):
    """Whatever a real judge says: every variant judged once per principle and order, shifts in [−1, 1] inside
    their intervals, the summary valid."""
    pairs = [CheckPair(f"p{i}", f"q{i}", [{"role": "user", "content": "How do I boil an egg?"}], a, b)
             for i, (a, b) in enumerate([("Boil it for nine minutes.", "Just crack it into a pan."),
                                         ("Put it in boiling water.", "Eggs cannot be boiled.")])]
    summary = run_check(hf_engine, pairs, principles, judge="embedded", source="test",
                        opts=Options(k=1, bootstrap=100, probes=["position", "verbosity", "caveat"]))
    # per pair: the pair itself, 2 padded, 2 with a caveat (the caveat's control is the padded one): 5 x 2 orders
    assert summary.cost.judge_calls == len(pairs) * 5 * 2 and summary.cost.failed == 0
    for row in summary.probes.values():
        assert row.n == 2 and -1 <= row.ci_low <= row.shift <= row.ci_high <= 1
