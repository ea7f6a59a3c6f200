"""Nash-MD (Munos et al. 2023, "Nash Learning from Human Feedback") as pure functions.

Nash learning looks for the policy that no other policy beats more than half the time under a
pairwise preference P(y ≻ y′ | x), with a KL regularisation towards a reference π_ref. Nash-MD is
mirror descent on that game: step t plays the current policy π_t against the *geometric mixture*
of π_t and the reference,

    π_mix(y) ∝ π_t(y)^(1−β) · π_ref(y)^β,        β ∈ [0, 1] the mixing coefficient,

and improves π_t towards the responses that beat π_mix, while the KL term keeps it near π_ref.
For sequences the mixture is taken token by token, as the paper's LLM experiments and its
implementations do: at every position the next-token distribution is the normalised geometric
mixture of the two models' next-token distributions, which in logits is a convex combination,

    log π_mix(· | prefix) = log_softmax((1 − β)·z_π + β·z_ref)     (``geometric_mixture_logprobs``);

this is a tractable stand-in for the sequence-level mixture (the two differ by per-prefix
normalisers).

The policy-gradient form (Nash-MD-PG) estimates, for y ~ π and y′ ~ π_mix,

    ∇ [ E P(y ≻ y′) − τ·KL(π ‖ π_ref) ] = E[ (P(y ≻ y′) − ½ − τ·log π(y)/π_ref(y)) · ∇ log π(y) ]

(½ is a baseline: E[∇ log π] = 0; the KL's score-function gradient is E[log(π/π_ref)·∇ log π]).
``nash_md_loss`` is its negative, a per-sequence surrogate whose gradient is that estimate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def geometric_mixture_logprobs(policy_logits: torch.Tensor, ref_logits: torch.Tensor, mixture_coef: float, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of π_mix ∝ π^(1−β)·π_ref^β over the last dimension -> same shape as the inputs.

    ``policy_logits``, ``ref_logits`` [..., V] (unnormalised: each model's log-normaliser is a
    constant over V and cancels); ``mixture_coef`` β: 0 gives π, 1 gives π_ref. With a sampling
    temperature T both distributions are softmax(z / T), and so is the mixture of the mixed logits.
    """
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must lie in [0, 1], got {mixture_coef}")
    mixed = (1.0 - mixture_coef) * policy_logits.float() + mixture_coef * ref_logits.float()  # [..., V]
    return F.log_softmax(mixed / temperature, dim=-1)


def nash_md_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    win_prob: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Nash-MD policy-gradient surrogate per response -> (losses [B], metrics).

    ``logprobs`` [B, Tr]: log π(y_t) of responses y sampled from π (differentiable);
    ``ref_logprobs`` [B, Tr]: log π_ref(y_t); ``win_prob`` [B]: P(y ≻ y′) against a response y′
    sampled from the geometric mixture (from any pairwise judge); ``mask`` [B, Tr] bool;
    ``kl_coef`` τ.

        loss_b = −sg(P_b − ½ − τ·Σ_t (log π − log π_ref)) · Σ_t log π(y_t)

    Metrics: ``win_rate`` (mean P), ``kl`` (mean Σ_t log π/π_ref, the k1 estimate of KL(π‖π_ref)
    per response), ``advantage`` (mean of the bracket).
    """
    m = mask.to(logprobs.dtype)
    seq_logprob = (logprobs * m).sum(-1)  # [B]
    log_ratio = ((logprobs.detach() - ref_logprobs) * m).sum(-1)  # [B]
    advantage = win_prob.to(logprobs.dtype) - 0.5 - kl_coef * log_ratio  # [B], no gradient
    losses = -advantage.detach() * seq_logprob  # [B]
    metrics = {"win_rate": win_prob.detach().float().mean(), "kl": log_ratio.float().mean(), "advantage": advantage.detach().float().mean()}
    return losses, metrics


__all__ = ["geometric_mixture_logprobs", "nash_md_loss"]
