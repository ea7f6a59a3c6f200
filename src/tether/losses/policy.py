"""Policy-gradient losses over sampled tokens: PPO's clipped surrogate, GRPO, entropy bonus.

All work per token on [B, T] tensors with a mask of the tokens the policy generated; they
return per-token losses (0 off the mask) so the trainer picks the reduction
(``tether.losses.reduce.token_mean_global`` for a step-wide token mean, or per-sequence
means) and metrics as detached means over the masked tokens of this batch.
"""

from __future__ import annotations

import torch

from tether.losses.reduce import masked_mean
from tether.rl.kl import KLEstimator, kl_estimate

Metrics = dict[str, torch.Tensor]


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sequence-level advantages [B] broadcast over tokens; [B, T] passes through."""
    return advantages.unsqueeze(-1) if advantages.dim() == like.dim() - 1 else advantages


def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017), per token.

        ratio = exp(lp − lp_old)
        loss  = −min(ratio·A, clip(ratio, 1 − ε, 1 + ε_high)·A)

    ``ε_high`` defaults to ε (``clip_eps_high`` allows the asymmetric "clip-higher" range).
    Dual clip (Ye et al. 2020), c > 1: for A < 0 the objective is also bounded below by c·A,
    i.e. loss = min(loss, −c·A), so a huge ratio on a bad token cannot give an unbounded step.

    ``logprobs`` [B, T] (with grad), ``old_logprobs`` [B, T] from the sampling policy (None:
    the current ones detached, ratio ≡ 1 but the gradient of ratio·A is still A·∇lp),
    ``advantages`` [B, T] or [B] (one per sequence), ``mask`` [B, T] bool.

    Returns per-token losses [B, T] and metrics: ``clipfrac`` (fraction of tokens whose
    clipped branch is taken, i.e. whose gradient is zeroed), ``approx_kl`` (mean of
    (ratio − 1) − log ratio, Schulman's k3 estimate of KL(old ‖ new)), ``ratio`` (mean), and
    ``dual_clipfrac`` with dual clip.
    """
    mask = mask.bool()
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    advantages = _per_token(advantages, logprobs)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logprobs - old_logprobs  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -ratio * advantages  # [B, T]
    clipped = -torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * advantages  # [B, T]
    losses = torch.maximum(unclipped, clipped)
    metrics: Metrics = {}
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -dual_clip * advantages  # [B, T]
        dual_active = (advantages < 0) & (bound < losses)
        losses = torch.where(dual_active, bound, losses)
        metrics["dual_clipfrac"] = masked_mean(dual_active.to(logprobs.dtype), mask).detach()
    losses = torch.where(mask, losses, torch.zeros((), dtype=losses.dtype, device=losses.device))
    with torch.no_grad():
        metrics["clipfrac"] = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
        metrics["approx_kl"] = masked_mean((ratio - 1) - log_ratio, mask)
        metrics["ratio"] = masked_mean(ratio, mask)
    return losses, metrics


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.04,
    kl_estimator: KLEstimator | str = KLEstimator.K3,
) -> tuple[torch.Tensor, Metrics]:
    """GRPO (Shao et al. 2024) per token: clipped surrogate plus a KL penalty in the loss.

        loss = ppo_clip(lp, lp_old, A) + β·KL(π ‖ π_ref)_t,
        KL_t = k3 = (exp(ref − lp) − 1) − (ref − lp)  (by default)

    Advantages are usually group-normalised sequence rewards ([B], see
    ``tether.rl.advantages.group_advantages``). With β = 0, ``ref_logprobs`` may be None.
    Shapes as ``ppo_clip_loss``; metrics add ``kl`` (mean per-token estimate).
    """
    losses, metrics = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps=clip_eps, clip_eps_high=clip_eps_high)
    if beta == 0.0 and ref_logprobs is None:
        return losses, metrics
    kl = kl_estimate(kl_estimator, logprobs, ref_logprobs)  # [B, T]
    kl = torch.where(mask.bool(), kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    metrics["kl"] = masked_mean(kl.detach(), mask)
    return losses + beta * kl, metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) − Σ_v softmax(z)_v·z_v, per position: [*, V] -> [*]."""
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, *, coef: float = 0.01) -> tuple[torch.Tensor, Metrics]:
    """Entropy bonus as a loss to add: −coef·H_t per token (0 off the mask).

    ``entropy`` [B, T] (e.g. ``entropy_from_logits``); metrics: ``entropy`` (masked mean).
    """
    mask = mask.bool()
    losses = torch.where(mask, -coef * entropy, torch.zeros((), dtype=entropy.dtype, device=entropy.device))
    return losses, {"entropy": masked_mean(entropy.detach(), mask)}
