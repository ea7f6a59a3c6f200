"""Agreement statistics and active selection against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from tether.feedback.annotate.select import priorities, selection_order
from tether.feedback.annotate.stats import (
    bootstrap_interval,
    cohen_kappa,
    fleiss_kappa,
    item_agreement,
    kendall_tau,
    mean_pairwise_tau,
)

# Two annotators on ten items: they agree on items 1-4 (y), 8-10 (n) and differ on 5, 6, 7.
FIRST = list("yyyyyynnnn")
SECOND = list("yyyynnynnn")


def test_cohen_kappa_by_hand():
    """p_o = 7/10; first says y 6/10, second 5/10, so p_e = 0.6·0.5 + 0.4·0.5 = 0.5;
    kappa = (0.7 − 0.5) / (1 − 0.5) = 0.4."""
    assert cohen_kappa(FIRST, SECOND) == pytest.approx(0.4)
    assert cohen_kappa(FIRST, FIRST) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(list("yyy"), list("yyy")))  # p_e = 1: undefined, not 1


def test_fleiss_kappa_by_hand():
    """Three items, three annotators, two labels; counts [[3,0],[2,1],[0,3]].
    Per-item agreement: (9−3)/6 = 1, (4+1−3)/6 = 1/3, 1; P̄ = 7/9. Label shares 5/9, 4/9:
    P_e = 41/81. kappa = (63/81 − 41/81) / (40/81) = 22/40 = 0.55."""
    counts = np.array([[3, 0], [2, 1], [0, 3]])
    assert item_agreement(counts) == pytest.approx([1.0, 1 / 3, 1.0])
    assert fleiss_kappa(counts) == pytest.approx(0.55)


def test_fleiss_with_two_annotators_is_scotts_pi():
    """With two labels per item Fleiss' kappa is Scott's pi: pooled y share (6+5)/20 = 0.55, so
    P_e = 0.55² + 0.45² = 0.505, and P̄ = p_o = 0.7: pi = 0.195 / 0.495. Unlike Cohen's kappa
    (0.4), which uses each annotator's own label shares."""
    counts = np.array([[(a == "y") + (b == "y"), (a == "n") + (b == "n")] for a, b in zip(FIRST, SECOND)])
    assert fleiss_kappa(counts) == pytest.approx(0.195 / 0.495)


def test_kendall_tau_by_hand():
    """[0,1,2,3] against [1,0,2,3]: of the 6 pairs only (0,1) is discordant: (5 − 1)/6 = 2/3."""
    assert kendall_tau([0, 1, 2, 3], [1, 0, 2, 3]) == pytest.approx(2 / 3)
    assert kendall_tau([0, 1, 2], [2, 1, 0]) == pytest.approx(-1.0)
    # three rankings: taus 2/3 (a,b), 1 (a,c), 2/3 (b,c) -> mean 7/9
    assert mean_pairwise_tau([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 2, 3]]) == pytest.approx(7 / 9)
    with pytest.raises(ValueError):
        kendall_tau([0, 1], [0, 2])


def test_bootstrap_interval_properties():
    assert bootstrap_interval([1.0] * 20, np.mean) == (1.0, 1.0)  # no spread, no width
    lo, hi = bootstrap_interval([0.0] * 10 + [1.0] * 10, lambda xs: float(np.mean(xs)), n_boot=400)
    assert 0.2 < lo < 0.5 < hi < 0.8  # the mean 0.5 inside, roughly ± 2·sqrt(.25/20) = ±0.22
    assert all(math.isnan(x) for x in bootstrap_interval([1.0], np.mean))


def test_selection_orders_by_member_disagreement():
    """Two members, two items of two completions. Member 1 scores both items (1, 0); member 2
    scores item 0 (1, 0) and item 1 (0, 1). Item 0: both predict σ(1) ≈ 0.731, spread 0.
    Item 1: σ(1) and σ(−1); sample std = (σ(1) − σ(−1))/√2. Rule 'even': item 0 mean 0.731 gives
    0.5 − 0.231 = 0.269, item 1 mean 0.5 gives 0.5. Both rules put item 1 first."""
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])  # [M=2, N=2, K=2]
    sig = 1 / (1 + math.exp(-1))
    assert priorities(s, "disagreement").tolist() == pytest.approx([0.0, (2 * sig - 1) / math.sqrt(2)], abs=1e-6)
    assert priorities(s, "even").tolist() == pytest.approx([1 - sig, 0.5], abs=1e-6)
    assert selection_order(s, "disagreement") == [1, 0]
    assert selection_order(s, "even") == [1, 0]


def test_selection_over_rankings_averages_pairs():
    """K = 3: the priority is the mean over the 3 pairs; a member that reverses every pair of
    item 1 makes it the most disputed, and an item with identical members has 0 spread."""
    agree = torch.tensor([2.0, 1.0, 0.0])
    s = torch.stack([torch.stack([agree, agree]), torch.stack([agree, agree.flip(0)])])  # [M=2, N=2, K=3]
    prio = priorities(s, "disagreement")
    assert prio[0] == pytest.approx(0.0) and prio[1] > 0.1
    with pytest.raises(ValueError, match="at least 2 members"):
        priorities(s[:1], "disagreement")


def test_batched_statistics_equal_one_at_a_time():
    """The bootstrap runs Cohen's and Fleiss' kappa over all resamples at once; each batch row
    must equal the statistic computed alone."""
    from tether.feedback.annotate.stats import cohen_kappa_codes

    rng = np.random.default_rng(0)
    pairs = rng.integers(0, 3, (7, 12, 2))  # [B, n, 2]
    batched = cohen_kappa_codes(pairs, 3)
    assert batched == pytest.approx([cohen_kappa(list(p[:, 0]), list(p[:, 1])) for p in pairs], nan_ok=True)
    counts = rng.multinomial(4, [0.5, 0.3, 0.2], size=(7, 9))  # [B, N, C], 4 labels per item
    assert fleiss_kappa(counts) == pytest.approx([fleiss_kappa(c) for c in counts])
    units = rng.random(30)
    assert bootstrap_interval(units, lambda xs: xs.mean(-1), n_boot=200, batched=True) == pytest.approx(bootstrap_interval(list(units), lambda xs: float(np.mean(xs)), n_boot=200))
