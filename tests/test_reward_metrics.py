"""Reward-model evaluation math against hand-computed values."""

import math

import pytest
import torch

from tether.evaluate.reward_metrics import (
    calibration_bins,
    expected_calibration_error,
    length_baseline_accuracy,
    reward_model_report,
)
from tether.losses.reward import pairwise_accuracy, ranking_pairs


def test_accuracy_counts_ties_as_half():
    """Gaps +1, −1, 0, +2: two right, one wrong, one tie -> (1 + 0 + 0.5 + 1) / 4 = 0.625."""
    assert float(pairwise_accuracy(torch.tensor([1.0, 0.0, 3.0, 2.0]), torch.tensor([0.0, 1.0, 3.0, 0.0]))) == pytest.approx(0.625)


def test_length_baseline():
    """Chosen longer, shorter, equal: (1 + 0 + 0.5) / 3 = 0.5."""
    assert length_baseline_accuracy(torch.tensor([10, 3, 5]), torch.tensor([4, 8, 5])) == pytest.approx(0.5)


def test_ece_by_hand():
    """Four pairs with gaps chosen so that σ(d) is round:

    σ(ln 4) = 0.8; σ(−ln 4) = 0.2; σ(ln 1.5) = 0.6.
    Pairs: d = ln 4 (p 0.8, conf 0.8, right), ln 4 (0.8, right), −ln 4 (p 0.2, conf 0.8, wrong),
    ln 1.5 (p 0.6, conf 0.6, right). 10 bins of width 0.05 over [0.5, 1]:
      conf 0.8 -> bin floor(0.3 / 0.05) = 6 (the float may land in bin 5 or 6; both hold all three),
      conf 0.6 -> bin 2.
    Bin of 0.8: 3 pairs, accuracy 2/3, confidence 0.8 -> |2/3 − 0.8| = 2/15.
    Bin of 0.6: 1 pair, accuracy 1, confidence 0.6 -> 0.4.
    ECE = 3/4 · 2/15 + 1/4 · 0.4 = 0.1 + 0.1 = 0.2.
    """
    d = torch.tensor([math.log(4), math.log(4), -math.log(4), math.log(1.5)], dtype=torch.float64)
    rejected = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=torch.float64)
    chosen = rejected + d
    assert expected_calibration_error(chosen, rejected, num_bins=10) == pytest.approx(0.2, abs=1e-12)
    bins = [b for b in calibration_bins(chosen, rejected, 10) if b["count"]]
    assert [b["count"] for b in bins] == [1, 3]


def test_perfectly_calibrated_bin_has_zero_ece():
    """Five pairs at confidence 0.8 with four right: accuracy 0.8 = confidence, ECE 0."""
    d = torch.tensor([math.log(4)] * 4 + [-math.log(4)], dtype=torch.float64)
    assert expected_calibration_error(d, torch.zeros(5, dtype=torch.float64)) == pytest.approx(0.0, abs=1e-12)


def test_ranking_pairs_respect_order_and_mask():
    """A ranking [3, 1, 2] gives pairs (3,1), (3,2), (1,2); a masked 3rd slot leaves only (5,4)."""
    scores = torch.tensor([[3.0, 1.0, 2.0], [5.0, 4.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    better, worse = ranking_pairs(scores, mask)
    assert sorted(zip(better.tolist(), worse.tolist())) == [(1.0, 2.0), (3.0, 1.0), (3.0, 2.0), (5.0, 4.0)]
    report = reward_model_report(better, worse, better, worse)  # lengths = scores: baseline = accuracy
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["length_baseline_accuracy"] == pytest.approx(0.75)
