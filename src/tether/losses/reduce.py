"""Reductions over masked token tensors, with explicit normalisers.

A micro-batch never knows how many tokens the whole optimiser step holds, so a "mean over
tokens" computed per micro-batch and then averaged is *not* the mean over the step (micro-batches
with few tokens would weigh as much as long ones). Here every mean that crosses micro-batches
takes its denominator as an argument: the trainer counts the step's tokens once and passes the
count to every micro-batch, so that ``sum(piece losses)`` equals the full-batch loss exactly,
and so does the gradient.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Σ values·mask over ``dim`` (all dims when None).

    ``values`` [*], ``mask`` [*] bool or 0/1 of the same shape (or broadcastable). Masked-out
    entries are replaced by 0 with ``torch.where`` rather than multiplied, so a NaN or inf in a
    padding position cannot leak into the sum or its gradient.
    """
    kept = torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Σ values·mask / max(Σ mask, 1) over ``dim`` (all dims when None).

    Local mean for metrics and for quantities that never cross micro-batches. An all-false mask
    gives 0, not NaN, so a metric over an empty subset (e.g. no desirable examples in a KTO
    micro-batch) does not poison a running sum.
    """
    count = mask.bool().expand_as(values).sum() if dim is None else mask.bool().expand_as(values).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1).to(values.dtype)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (a scalar); Bessel-corrected by default.

    var = Σ mask·(x − μ)² / (n − 1) with μ = masked_mean(x), n = Σ mask.
    """
    mean = masked_mean(values, mask)
    count = mask.bool().expand_as(values).sum()
    denom = (count - 1) if unbiased else count
    return masked_sum((values - mean) ** 2, mask) / denom.clamp(min=1).to(values.dtype)


def sum_per_sequence(token_values: torch.Tensor, sequence_ids: torch.Tensor, mask: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Per-sequence sums of token values in either batch layout -> [N].

    out[n] = Σ_{(r,t): mask[r,t] and sequence_ids[r,t] = n} token_values[r, t]

    ``token_values`` [R, T]; ``sequence_ids`` [R, T] long, the sequence (0..N-1) that owns
    position t (−1 where none); ``mask`` [R, T] bool. Works the same for padded batches (one
    sequence per row) and packed ones (several per row); see ``TokenBatch`` in
    docs/architecture.md. Differentiable in ``token_values``.
    """
    mask = mask.bool()
    sums = token_values.new_zeros(num_sequences)  # [N]
    return sums.index_add(0, sequence_ids[mask], token_values[mask])


def token_mean_global(values: torch.Tensor, mask: torch.Tensor, normaliser: float | torch.Tensor) -> torch.Tensor:
    """Σ values·mask / normaliser, with the normaliser fixed by the caller (a scalar).

    For a step split into micro-batches b with token masks m_b, pass the step's total token
    count M = Σ_b Σ m_b as ``normaliser`` to every micro-batch; then
    Σ_b token_mean_global(x_b, m_b, M) = Σ_all x·m / M, the full-batch token mean, and its
    gradient is the full-batch gradient.
    """
    return masked_sum(values, mask) / normaliser


def example_mean(values: torch.Tensor, weights: torch.Tensor | None = None, normaliser: float | torch.Tensor | None = None) -> torch.Tensor:
    """Mean over examples, optionally weighted: Σ_i w_i·values_i / N (plain mean when ``weights`` is None).

    ``values`` [N] per-example losses, ``weights`` [N] ≥ 0 (detached: they are data, not
    parameters). The normaliser is N, not Σ w: a batch of low-weight examples moves the
    parameters less, which is what down-weighting uncertain labels is for. ``normaliser``
    replaces N when the examples are one process's share of a batch (pass the batch's total
    count, so that the shares' losses add up to the whole batch's mean, as ``token_mean_global``).
    """
    if weights is not None:
        if weights.shape != values.shape:
            raise ValueError(f"weights {tuple(weights.shape)} must match the per-example values {tuple(values.shape)}")
        if bool((weights < 0).any()):
            raise ValueError("example weights must be >= 0")
        values = values * weights.detach().to(values.dtype)
    count = max(values.numel(), 1) if normaliser is None else normaliser
    return values.sum() / count
