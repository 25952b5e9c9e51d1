"""The style-controlled win rate (audit/stats.py): markdown counted as LMSYS counts it, the fit, and on synthetic
data where the judge rewards markdown and nothing else, a style-controlled rate of about 0.5 where the raw rate
and the length-controlled rate are well above it."""

from __future__ import annotations

import numpy as np
import pytest

from cai_pipeline.audit.stats import (
    audit_scores,
    fit_logistic,
    fit_logistic_features,
    length_feature,
    markdown_counts,
    sigmoid,
    style_features,
)


def test_markdown_counts():
    text = "# Title\n\nSome **bold** and __also bold__ text.\n\n- one\n* two\n1. three\n2) four\n#not a header\n**"
    assert markdown_counts(text) == (1, 2, 4)
    assert markdown_counts("plain words, 3 * 4 = 12, a - b") == (0, 0, 0)


def test_style_features_are_zero_where_the_responses_are_alike():
    delta = np.array([10.0, -5.0, 0.0, 3.0])
    a = [(0, 2, 3), (0, 0, 0), (1, 1, 1), (0, 1, 0)]
    b = [(0, 0, 3), (0, 0, 0), (1, 1, 1), (0, 3, 0)]
    x = style_features(delta, a, b)
    assert x.shape == (4, 4) and np.all(x[2] == 0) and np.all(x[1, 1:] == 0)
    assert np.all(x[:, 1] == 0)  # no headers anywhere: no header signal
    assert x[0, 2] > 0 and x[3, 2] < 0 and x[0, 3] == 0  # bold: (2 − 0)/2 = 1 and (1 − 3)/4 = −½, scaled alike
    assert x[0, 2] / x[3, 2] == pytest.approx(-2.0)
    np.testing.assert_allclose(x[:, 0], length_feature(delta))


def test_one_feature_is_length_controls_fit():
    rng = np.random.default_rng(1)
    x = np.tanh(rng.normal(size=80))
    p = sigmoid(0.4 + x + rng.normal(scale=0.5, size=80))
    theta, phi = fit_logistic(x, p)
    np.testing.assert_allclose(fit_logistic_features(x[:, None], p), [theta, phi], atol=1e-8)


def test_a_markdown_effect_is_controlled_to_about_one_half():
    """200 prompts, 2 pairs each. The model uses markdown more often than the baseline; the judge prefers the
    response with more markdown and is otherwise indifferent (quality equal, lengths unrelated)."""
    rng = np.random.default_rng(0)
    n = 400
    units = np.repeat(np.arange(n // 2), 2)
    model = np.column_stack([rng.binomial(1, 0.3, n), rng.poisson(2.0, n), rng.poisson(3.0, n)])
    base = np.column_stack([rng.binomial(1, 0.1, n), rng.poisson(0.5, n), rng.poisson(1.0, n)])
    delta = rng.normal(0, 40, n)  # length differences, unrelated to the preference
    total = model + base
    md = np.divide(model - base, total, out=np.zeros(total.shape), where=total > 0).sum(1)
    p = sigmoid(1.2 * md + rng.normal(scale=0.3, size=n))
    style = style_features(delta, model, base)
    scores = audit_scores(p[None], np.ones((1, n), bool), [1.0], units, delta, {}, n_boot=300, confidence=0.95,
                          seed=0, style=style)
    o = scores["overall"]
    assert o["win_rate"] > 0.65 and o["lc_win_rate"] > 0.65  # length control cannot see a markdown effect
    assert abs(o["sc_win_rate"] - 0.5) < 0.03 and o["sc_ci_low"] < 0.5 < o["sc_ci_high"]
    assert o["lc_ci_low"] > 0.5  # the raw and length-controlled intervals exclude one half
    # no style features: no style-controlled rate, and the other numbers are unchanged
    plain = audit_scores(p[None], np.ones((1, n), bool), [1.0], units, delta, {}, n_boot=300, confidence=0.95, seed=0)
    assert plain["overall"]["sc_win_rate"] is None
    assert {k: v for k, v in plain["overall"].items() if not k.startswith("sc_")} == {
        k: v for k, v in o.items() if not k.startswith("sc_")}
