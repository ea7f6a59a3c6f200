"""Advantages and baselines for policy-gradient updates.

* ``gae``: generalised advantage estimation with a learned value (PPO), for token sequences
  ([B, T] with a mask of generated tokens) and for episodic environments (time-major
  [T, E] with ``dones``): one recursion serves both.
* ``group_advantages`` (GRPO) and ``leave_one_out_advantages`` (RLOO): critic-free baselines
  from G samples of the same prompt.
* ``whiten``: masked standardisation.

Advantages carry no gradient: everything here runs under ``torch.no_grad``.
"""

from __future__ import annotations

import torch

from tether.losses.reduce import masked_mean, masked_sum, masked_var


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    mask: torch.Tensor | None = None,
    dones: torch.Tensor | None = None,
    bootstrap_value: torch.Tensor | None = None,
    time_dim: int = -1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) -> (advantages, returns).

    Over the real steps of a trajectory (those with mask True), with V_next the value of the
    next real step (0 after the last one, or ``bootstrap_value`` if the rollout was cut):

        δ_t = r_t + γ·(1 − done_t)·V_next − V_t
        A_t = δ_t + γλ·(1 − done_t)·A_next
        R_t = A_t + V_t        (the λ-return, the value target)

    ``done_t`` means the episode ended *at* step t (its next state is terminal), so nothing
    after it flows back. Steps with mask False (padding, prompt tokens, observation tokens in
    between) are skipped: they get A = R = 0 and the recursion passes over them, so right
    padding, left padding and holes all work. For token sequences put the sequence's score at
    its last real token (``place_terminal_rewards``) plus any per-token KL penalty.

    ``rewards``, ``values`` [..., T] (``time_dim=-1``, e.g. [B, T]) or [T, ...] (``time_dim=0``,
    e.g. [T, E] for vectorised envs); ``mask``, ``dones`` bool of the same shape (default: all
    real, no dones); ``bootstrap_value`` the value after the last step, shaped like one time
    slice ([B] or [E]); 0 when None. For a gymnasium truncation (time limit) mark done and fold
    γ·V(final observation) into that step's reward.
    """
    r = rewards.movedim(time_dim, 0)  # [T, *]
    v = values.movedim(time_dim, 0).to(r.dtype)  # [T, *]
    real = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.movedim(time_dim, 0).bool()
    done = torch.zeros_like(r, dtype=torch.bool) if dones is None else dones.movedim(time_dim, 0).bool()
    next_value = torch.zeros_like(r[0]) if bootstrap_value is None else bootstrap_value.to(r.dtype).expand_as(r[0]).clone()  # [*]
    next_advantage = torch.zeros_like(r[0])  # [*]
    advantages = torch.zeros_like(r)  # [T, *]
    for t in reversed(range(r.shape[0])):
        carry = (~done[t]).to(r.dtype)  # [*]
        delta = r[t] + gamma * carry * next_value - v[t]
        advantage = delta + gamma * lam * carry * next_advantage
        advantages[t] = torch.where(real[t], advantage, torch.zeros_like(advantage))
        # Only real steps update what flows back; skipped steps leave it untouched.
        next_value = torch.where(real[t], v[t], next_value)
        next_advantage = torch.where(real[t], advantage, next_advantage)
    returns = torch.where(real, advantages + v, torch.zeros_like(v))
    return advantages.movedim(0, time_dim), returns.movedim(0, time_dim)


@torch.no_grad()
def place_terminal_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards [B, T] holding each sequence's score [B] at its last real token.

    Rows with no real token get no reward.
    """
    mask = mask.bool()
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)  # [B, T]
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(-1)  # [B]
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)  # [B, T]
    has_tokens = last >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_tokens]
    rewards[rows, last[has_tokens]] = scores[has_tokens]
    return rewards


@torch.no_grad()
def whiten(values: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8, sum_over=None) -> torch.Tensor:
    """(x − μ)/√(σ² + ε) over the masked entries, with μ, σ² their mean and unbiased variance.

    ``shift_mean=False`` adds μ back (rescale only; keeps the sign convention of e.g. rewards).
    Entries off the mask are returned as 0. Shapes: ``values``, ``mask`` [*].
    ``sum_over``: a sum across processes (``tether.parallel.global_sum``); μ and σ² are then those
    of every process's entries together: μ = Σ_all x / n, σ² = Σ_all (x − μ)² / (n − 1).
    """
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    if sum_over is None:
        mean, var = masked_mean(values, mask), masked_var(values, mask)
    else:
        n = sum_over(mask.sum().to(values.dtype))
        mean = sum_over(masked_sum(values, mask)) / n.clamp(min=1)
        var = sum_over(masked_sum((values - mean) ** 2, mask)) / (n - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def _grouped(rewards: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """[N, G] as given, or flat [N*G] (group-major: prompt i's samples are i*G..i*G+G-1) -> [N, G]."""
    if rewards.dim() == 2:
        grouped = rewards
    elif group_size is None:
        raise ValueError("flat rewards need group_size")
    else:
        grouped = rewards.view(-1, group_size)
    if grouped.shape[1] < 2:
        raise ValueError(f"a group baseline needs at least 2 samples per prompt, got {grouped.shape[1]}")
    return grouped


@torch.no_grad()
def group_advantages(rewards: torch.Tensor, group_size: int | None = None, *, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: each reward relative to its group's mean (and std).

        A_ij = (r_ij − mean_j r_i·) / (std_j r_i· + ε)     (std unbiased, n − 1)

    ``rewards`` [N, G] or flat [N*G] with ``group_size`` G; returns the same shape. A group
    whose rewards are all equal gets A = 0 (no signal), not NaN. ``normalize_std=False``
    keeps only the mean baseline (Dr. GRPO's choice: dividing by std up-weights prompts that
    are nearly solved or nearly impossible).
    """
    grouped = _grouped(rewards, group_size)  # [N, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if normalize_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(rewards.shape)


@torch.no_grad()
def leave_one_out_advantages(rewards: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """RLOO advantages (Kool et al. 2019; Ahmadian et al. 2024): r_i minus the mean of the others.

        A_ij = r_ij − (Σ_k r_ik − r_ij)/(G − 1)  =  G/(G − 1)·(r_ij − mean_k r_ik)

    The baseline excludes the sample itself, so the policy-gradient estimate stays unbiased.
    ``rewards`` [N, G] or flat [N*G] with ``group_size``; returns the same shape.
    """
    grouped = _grouped(rewards, group_size)  # [N, G]
    g = grouped.shape[1]
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (g - 1)  # [N, G]
    return (grouped - others_mean).reshape(rewards.shape)


@torch.no_grad()
def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards for PPO on text (Ziegler et al. 2019) -> (rewards [B, T], kl [B, T]).

        r_t = −β·KL_t + 1[t = last real token]·score

    with KL_t a per-token estimate (``tether.rl.kl``, k1 = lp − ref by default) over the
    sampled tokens. The penalty is spread over every generated token so GAE credits each token
    with its own divergence, while the sequence score arrives only at the end. ``scores`` [B];
    ``logprobs``, ``ref_logprobs`` [B, T] at sampling time; ``mask`` [B, T] bool. Both outputs
    are 0 off the mask.
    """
    from tether.rl.kl import kl_estimate

    mask = mask.bool()
    kl = torch.where(mask, kl_estimate(estimator, logprobs, ref_logprobs), torch.zeros((), dtype=logprobs.dtype))  # [B, T]
    rewards = place_terminal_rewards(scores.to(logprobs.dtype), mask) - kl_coef * kl  # [B, T]
    return torch.where(mask, rewards, torch.zeros_like(rewards)), kl
