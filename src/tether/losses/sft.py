"""Supervised fine-tuning loss: negative log-likelihood of the completion tokens."""

from __future__ import annotations

import torch

from tether.losses.reduce import masked_sum, sum_per_sequence


def sft_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    sequence_ids: torch.Tensor | None = None,
    num_sequences: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Summed token NLL per sequence, and token counts for a global normaliser.

    nll[n] = − Σ_{t ∈ completion(n)} log π(y_t | y_<t, x)

    ``logprobs`` [R, T]: log-probability of each position's target token; ``mask`` [R, T] bool,
    True on completion targets. With ``sequence_ids`` [R, T] (and ``num_sequences`` N) the sums
    are per sequence in either padded or packed layout; without them each row is one sequence
    (N = R).

    Returns ``(nll [N], metrics)``; metrics (detached scalars): ``tokens`` (Σ mask, the count a
    trainer sums over micro-batches to normalise a step: loss = Σ nll / Σ tokens), ``nll_sum``
    and ``nll_per_token`` (this batch's own token mean, for logging).
    """
    mask = mask.bool()
    if sequence_ids is None:
        nll = -masked_sum(logprobs, mask, dim=-1)  # [R]
    else:
        if num_sequences is None:
            raise ValueError("sft_loss: num_sequences is required with sequence_ids")
        nll = -sum_per_sequence(logprobs, sequence_ids, mask, num_sequences)  # [N]
    tokens = mask.sum()
    nll_sum = nll.detach().sum()
    metrics = {
        "tokens": tokens.to(logprobs.dtype),
        "nll_sum": nll_sum,
        "nll_per_token": nll_sum / tokens.clamp(min=1),
    }
    return nll, metrics
