"""Agreement statistics as pure functions: Cohen's kappa, Fleiss' kappa, Kendall's tau, and a
bootstrap interval over units (items, or judgements) for any of them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """Cohen's kappa of two annotators' labels on the same items, in order:
    (p_o − p_e) / (1 − p_e), p_o the share of items they agree on and p_e the agreement expected
    from each one's own label frequencies. NaN when p_e = 1 (both always give one same label)."""
    if len(first) != len(second):
        raise ValueError(f"cohen_kappa needs labels for the same items: {len(first)} and {len(second)}")
    if len(first) == 0:
        return math.nan
    codes = {label: c for c, label in enumerate(sorted(set(first) | set(second), key=str))}
    pairs = np.array([[codes[a], codes[b]] for a, b in zip(first, second)])  # [n, 2]
    return float(cohen_kappa_codes(pairs, len(codes)))


def cohen_kappa_codes(pairs: np.ndarray, num_labels: int) -> np.ndarray:
    """Cohen's kappa from integer label codes ``pairs`` [..., n, 2] (first and second annotator per
    item) -> [...]; leading axes are batches (e.g. bootstrap resamples). NaN where p_e = 1."""
    a, b = pairs[..., 0], pairs[..., 1]  # [..., n]
    observed = (a == b).mean(-1)  # [...]
    labels = np.arange(num_labels)  # [C]
    share_a = (a[..., None] == labels).mean(-2)  # [..., C]
    share_b = (b[..., None] == labels).mean(-2)  # [..., C]
    expected = (share_a * share_b).sum(-1)  # [...]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(expected >= 1.0, np.nan, (observed - expected) / (1.0 - expected))


def item_agreement(counts: np.ndarray) -> np.ndarray:
    """Per item, the share of annotator pairs that agree: (Σ_j n_ij² − n_i) / (n_i (n_i − 1)),
    for ``counts`` [..., N, C] (n_ij annotators gave item i label j; every n_i ≥ 2) -> [..., N]."""
    counts = np.asarray(counts, dtype=float)  # [..., N, C]
    n = counts.sum(-1)  # [..., N]
    if (n < 2).any():
        raise ValueError("item_agreement needs at least two labels per item")
    return ((counts**2).sum(-1) - n) / (n * (n - 1))  # [..., N]


def fleiss_kappa(counts: np.ndarray):
    """Fleiss' kappa for ``counts`` [N, C]: (P̄ − P_e) / (1 − P_e), P̄ the mean of
    ``item_agreement`` and P_e = Σ_j p_j², p_j the share of all labels that are j. Items may have
    different numbers of labels (each ≥ 2); with equal numbers this is Fleiss (1971) exactly.
    Leading axes [..., N, C] are batches (bootstrap resamples) and give an array [...]."""
    counts = np.asarray(counts, dtype=float)  # [..., N, C]
    if counts.shape[-2] == 0:
        return math.nan
    p_bar = item_agreement(counts).mean(-1)  # [...]
    p_j = counts.sum(-2) / counts.sum((-2, -1))[..., None]  # [..., C]
    p_e = (p_j**2).sum(-1)  # [...]
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(p_e >= 1.0, np.nan, (p_bar - p_e) / (1.0 - p_e))
    return float(kappa) if kappa.ndim == 0 else kappa


def kendall_tau(first: Sequence[int], second: Sequence[int]) -> float:
    """Kendall's tau between two rankings of the same K things, each a list of their ids best
    first: (concordant − discordant pairs) / (K (K − 1) / 2). 1 = same order, −1 = reversed."""
    if sorted(first) != sorted(second) or len(set(first)) != len(first):
        raise ValueError(f"kendall_tau needs two orderings of the same distinct ids, got {list(first)} and {list(second)}")
    k = len(first)
    if k < 2:
        return math.nan
    pos_a = {x: i for i, x in enumerate(first)}
    pos_b = {x: i for i, x in enumerate(second)}
    score = sum(np.sign(pos_a[x] - pos_a[y]) * np.sign(pos_b[x] - pos_b[y]) for x, y in itertools.combinations(first, 2))
    return float(score / (k * (k - 1) / 2))


def mean_pairwise_tau(rankings: Sequence[Sequence[int]]) -> float:
    """Mean Kendall's tau over every two of an item's rankings (≥ 2 of them)."""
    return float(np.mean([kendall_tau(a, b) for a, b in itertools.combinations(rankings, 2)]))


def bootstrap_interval(units: Sequence, statistic: Callable, n_boot: int = 1000, level: float = 0.95, seed: int = 0, batched: bool = False) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(units)``: resample the units with replacement
    ``n_boot`` times and take the (1 ± level)/2 quantiles of the finite results. (NaN, NaN) when
    there are fewer than two units or no finite resample. ``batched=True``: ``units`` is an array
    [n, ...] and ``statistic`` takes all resamples at once, [n_boot, n, ...] -> [n_boot]."""
    if len(units) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(units), (n_boot, len(units)))  # [n_boot, n]
    if batched:
        values = np.asarray(statistic(np.asarray(units)[idx]), dtype=float)  # [n_boot]
    else:
        values = np.array([statistic([units[i] for i in row]) for row in idx], dtype=float)  # [n_boot]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


__all__ = ["bootstrap_interval", "cohen_kappa", "cohen_kappa_codes", "fleiss_kappa", "item_agreement", "kendall_tau", "mean_pairwise_tau"]
