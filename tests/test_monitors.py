"""Reward-hacking monitors on hand-made series."""

from __future__ import annotations

import pytest

from tether.evaluate.monitors import Monitors, correlation, entropy_collapse, kl_growth, length_drift, proxy_gold_divergence, slope


def test_slope_and_correlation_hand_values():
    """slope of [1, 3, 5] is 2; [0, 1, 0, 1] has slope 0.2 (Σ(t−1.5)(x−.5) = 0.75 − 0.25 − 0.25 + 0.75 = 1, Σ(t−1.5)² = 5);
    corr of a line with its negation is −1; of anything with a constant, 0."""
    assert slope([1, 3, 5]) == pytest.approx(2.0)
    assert slope([0, 1, 0, 1]) == pytest.approx(0.2)
    assert correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert correlation([1, 2, 3], [5, 5, 5]) == 0.0


def test_proxy_rising_gold_falling_fires_and_both_rising_does_not():
    proxy = [0.1 * t for t in range(10)]
    assert proxy_gold_divergence(proxy, [1 - 0.05 * t for t in range(10)], window=10)[1]["gold_slope"] == pytest.approx(-0.05)
    assert proxy_gold_divergence(proxy, [0.5 + 0.02 * t for t in range(10)], window=10) is None
    assert proxy_gold_divergence(proxy[:5], proxy[:5], window=10) is None  # not enough history


def test_anticorrelation_fires_even_without_trends():
    proxy = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    gold = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0.0]
    out = proxy_gold_divergence(proxy, gold, window=10, min_rise=1.0)  # the slope rule cannot fire
    assert out is not None and out[1]["correlation"] == pytest.approx(-1.0)


def test_kl_growth():
    assert kl_growth([0.1 * t for t in range(10)], window=10, max_slope=0.5) is None
    message, figures = kl_growth([1.0 * t for t in range(10)], window=10, max_slope=0.5)
    assert figures["kl_slope"] == pytest.approx(1.0)
    assert kl_growth([0.0, 25.0], window=10, max_kl=20.0)[1]["kl"] == 25.0


def test_length_drift_both_ways_and_stable():
    assert length_drift([10] * 10 + [20] * 10, window=10, max_ratio=1.5)[1]["ratio"] == pytest.approx(2.0)
    assert length_drift([30] * 10 + [10] * 10, window=10, max_ratio=1.5)[1]["ratio"] == pytest.approx(1 / 3)
    assert length_drift([10] * 10 + [12] * 10, window=10, max_ratio=1.5) is None


def test_entropy_collapse():
    assert entropy_collapse([2.0] * 10 + [0.4] * 10, window=10, min_fraction=0.3)[1]["fraction"] == pytest.approx(0.2)
    assert entropy_collapse([2.0] * 10 + [1.0] * 10, window=10, min_fraction=0.3) is None


def test_monitors_fire_once_and_round_trip_state():
    history = {"reward/mean": [], "gold/mean": [], "kl/ref": [], "response/length": [], "policy/entropy": []}
    monitors = Monitors(window=5)
    fired = []
    for t in range(12):
        history["reward/mean"].append(0.1 * t)
        history["gold/mean"].append(1.0 - 0.1 * t)
        history["kl/ref"].append(0.01)
        history["response/length"].append(10.0)
        history["policy/entropy"].append(2.0)
        fired += monitors.check(t + 1, history)
    assert [w.name for w in fired] == ["proxy_gold_divergence"]
    assert fired[0].step == 5  # the first step with a full window
    assert "proxy_gold_divergence at step 5" in fired[0].line()
    restored = Monitors(window=5)
    restored.load_state_dict(monitors.state_dict())
    assert restored.check(13, history) == []  # already reported
    assert restored.summary()[0]["name"] == "proxy_gold_divergence"
