"""The peer benchmarks' shared statistics (bench/harness.py): run order and min/median/max."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import harness  # noqa: E402


def test_rounds_alternate_and_default_to_three():
    """Round 1 runs A then B, round 2 B then A, round 3 A then B: each side goes first in turn."""
    assert harness.ROUNDS >= 3
    assert list(harness.alternate(3, ("a", "b"))) == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]


def test_spread_and_summary_use_medians(capsys):
    """tether runs 4, 1, 3 -> min 1, median 3, max 4; trl runs 1, 2, 9 -> median 2; ratio 3 / 2 = 1.50.
    Peak RSS medians 100 and 400 -> memory ratio 0.25 (a max, 300, would give 0.33)."""
    results = {
        "tether": [{"x": 4.0, "peak_rss_mb": 100}, {"x": 1.0, "peak_rss_mb": 300}, {"x": 3.0, "peak_rss_mb": 90}],
        "trl": [{"x": 1.0, "peak_rss_mb": 400}, {"x": 2.0, "peak_rss_mb": 400}, {"x": 9.0, "peak_rss_mb": 410}],
    }
    assert harness.spread([4.0, 1.0, 3.0]) == (1.0, 3.0, 4.0)
    assert harness.format_spread([4.0, 1.0, 3.0], 1) == "3.0 (1.0-4.0)"
    medians = harness.print_summary(results, "x", "units")
    assert medians == {"tether": 3.0, "trl": 2.0}
    out = capsys.readouterr().out
    assert "median 3.00  min 1.00  max 4.00" in out
    assert "ratio tether/trl (medians): 1.50x" in out
    assert "peak-memory ratio tether/trl (medians): 0.25x" in out
