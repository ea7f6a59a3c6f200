"""Summary statistics of an evaluation: mean/std/stderr, distinct-n, and the paired bootstrap over prompts.

The bootstrap resamples *prompts* with replacement and keeps every sample of a drawn prompt
(the policy's and the reference's responses to it, each sample slot) together, so the interval
reflects both the prompt-to-prompt variation and the correlation between samples of one prompt.
A round is represented by how many times each prompt was drawn; a statistic of that round is
the same statistic with each row weighted by its prompt's count. Every estimator here therefore
takes row weights ``[R, N]`` (R rounds, N rows) and is computed for all rounds at once.
"""

from __future__ import annotations

import math

import torch


def mean_std_stderr(values: torch.Tensor) -> dict[str, float]:
    """Mean, sample standard deviation (n − 1) and standard error std/√n of [N] values."""
    v = values.double().flatten()
    n = v.numel()
    if n == 0:
        return {"mean": float("nan"), "std": float("nan"), "stderr": float("nan"), "n": 0}
    std = float(v.std()) if n > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "stderr": std / math.sqrt(n), "n": n}


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n of Li et al. (2016): unique word n-grams / all word n-grams over every text.

    Words are whitespace-separated tokens (model-independent, so two tokenizers compare); n-grams
    do not cross from one text to the next. No n-grams at all (every text shorter than n) gives 0.
    """
    total, unique = 0, set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def bootstrap_counts(num_prompts: int, rounds: int, seed: int) -> torch.Tensor:
    """How often each prompt is drawn in each round: [R, P] float64, each row summing to P.

    Drawing P prompts with replacement, uniformly, is a multinomial count vector."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(num_prompts, (rounds, num_prompts), generator=generator)  # [R, P]
    return torch.zeros(rounds, num_prompts, dtype=torch.float64).scatter_add_(1, draws, torch.ones(rounds, num_prompts, dtype=torch.float64))


def row_weights(counts: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
    """Per-prompt counts [R, P] -> per-row weights [R, N] (row r belongs to prompt ``prompt_index[r]``)."""
    return counts[:, prompt_index.long()]


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·v / Σ w per round: values [N], weights [R, N] -> [R]."""
    return (weights * values.double()).sum(1) / weights.sum(1)


def percentile_interval(estimates: torch.Tensor, confidence: float) -> tuple[float, float]:
    """The (1 − c)/2 and (1 + c)/2 quantiles of the bootstrap estimates [R] (the percentile interval)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    finite = estimates.double()[torch.isfinite(estimates.double())]
    if finite.numel() == 0:
        return float("nan"), float("nan")
    q = torch.quantile(finite, torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])


def bootstrap_mean(values: torch.Tensor, prompt_index: torch.Tensor, counts: torch.Tensor, confidence: float) -> dict[str, float]:
    """Mean/std/stderr of [N] values and its paired-bootstrap percentile interval (``counts`` [R, P])."""
    out = mean_std_stderr(values)
    low, high = percentile_interval(weighted_mean(values, row_weights(counts, prompt_index)), confidence)
    out.update(ci_low=low, ci_high=high)
    return out


__all__ = [
    "bootstrap_counts",
    "bootstrap_mean",
    "distinct_n",
    "mean_std_stderr",
    "percentile_interval",
    "row_weights",
    "weighted_mean",
]
