"""Value-function loss for PPO's critic."""

from __future__ import annotations

import torch

from tether.losses.reduce import masked_mean, masked_var

Metrics = dict[str, torch.Tensor]


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) over masked entries (detached scalar; 1 is perfect, ≤ 0 is useless).

    NaN-free: when Var(R) = 0 it returns 0.
    """
    v, r = values.detach(), returns.detach()
    var_returns = masked_var(r, mask)
    if var_returns == 0:
        return torch.zeros((), dtype=r.dtype, device=r.device)
    return 1 - masked_var(r - v, mask) / var_returns


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float | None = 0.2,
) -> tuple[torch.Tensor, Metrics]:
    """PPO's clipped value loss per token.

        V_clip = V_old + clip(V − V_old, −ε, ε)
        loss   = ½·max((V − R)², (V_clip − R)²)

    The max makes the clip pessimistic: a value that moved more than ε from the one used at
    rollout time gets no gradient toward R from outside the trust region. ``clip_eps=None``
    gives the plain ½·(V − R)².

    ``values`` [B, T] (with grad), ``old_values`` [B, T] at rollout time, ``returns`` [B, T],
    ``mask`` [B, T] bool. Returns per-token losses [B, T] (0 off the mask) and metrics
    ``value/clipfrac`` (tokens where the clipped branch is larger), ``value/mean``,
    ``value/mse``, ``value/explained_variance``.
    """
    mask = mask.bool()
    unclipped = (values - returns) ** 2  # [B, T]
    if clip_eps is None:
        squared = unclipped
        clipfrac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # [B, T]
        clipped = (values_clipped - returns) ** 2  # [B, T]
        squared = torch.maximum(unclipped, clipped)
        clipfrac = masked_mean((clipped > unclipped).to(values.dtype), mask).detach()
    losses = torch.where(mask, 0.5 * squared, torch.zeros((), dtype=values.dtype, device=values.device))
    metrics = {
        "value/clipfrac": clipfrac,
        "value/mean": masked_mean(values.detach(), mask),
        "value/mse": masked_mean(unclipped.detach(), mask),
        "value/explained_variance": explained_variance(values, returns, mask),
    }
    return losses, metrics
