"""Active selection: which items to show first, from a reward-model ensemble's per-member scores.

Each member m gives every completion k of item i a reward s[m, i, k]; member m's predicted
preference between completions j and k is σ(s[m,i,j] − s[m,i,k]) (Bradley–Terry). An item's
priority is, averaged over its completion pairs,

- ``disagreement``: the spread (sample std over members) of that predicted preference: where the
  members disagree most, a label teaches the model most;
- ``even``: 0.5 − |mean over members − 0.5|: the mean prediction closest to a coin toss.

Plain tensor functions, so they are tested without a model; ``ensemble_member_scores`` is the one
place a ``RewardEnsemble`` is called.
"""

from __future__ import annotations

from enum import Enum

import torch


class Rule(str, Enum):
    DISAGREEMENT = "disagreement"
    EVEN = "even"


def _pair_probs(member_scores: torch.Tensor) -> torch.Tensor:
    """[M, N, K] rewards -> [M, N, P] Bradley–Terry P(j ≻ k) for the P = K(K−1)/2 pairs j < k."""
    k = member_scores.shape[-1]
    j_idx, k_idx = torch.triu_indices(k, k, offset=1)  # [P], [P]
    return torch.sigmoid(member_scores[..., j_idx] - member_scores[..., k_idx])  # [M, N, P]


def _disagreement(probs: torch.Tensor) -> torch.Tensor:
    if probs.shape[0] < 2:
        raise ValueError("the disagreement rule needs an ensemble of at least 2 members; use rule 'even' for one model")
    return probs.std(0, correction=1).mean(-1)  # [N]


def _even(probs: torch.Tensor) -> torch.Tensor:
    return (0.5 - (probs.mean(0) - 0.5).abs()).mean(-1)  # [N]


PRIORITY = {Rule.DISAGREEMENT: _disagreement, Rule.EVEN: _even}


def priorities(member_scores: torch.Tensor, rule: Rule | str = Rule.DISAGREEMENT) -> torch.Tensor:
    """Per-item priority [N] (higher = show sooner) from per-member rewards [M, N, K]."""
    if member_scores.dim() != 3 or member_scores.shape[-1] < 2:
        raise ValueError(f"member_scores must be [members, items, completions>=2], got {tuple(member_scores.shape)}")
    return PRIORITY[Rule(rule)](_pair_probs(member_scores.float()))


def selection_order(member_scores: torch.Tensor, rule: Rule | str = Rule.DISAGREEMENT) -> list[int]:
    """Item indices, the one to show first first (ties keep the original order)."""
    prio = priorities(member_scores, rule)  # [N]
    return sorted(range(prio.shape[0]), key=lambda i: (-float(prio[i]), i))


def ensemble_member_scores(ensemble, prompts: list[str], completions: list[list[str]], batch_size: int = 16) -> torch.Tensor:
    """Per-member combined rewards [M, N, K] of N items with K completions each."""
    n, k = len(completions), len(completions[0])
    if any(len(c) != k for c in completions):
        raise ValueError("every item needs the same number of completions for ensemble scoring")
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat = [c for row in completions for c in row]
    per_objective = ensemble.score_all(flat_prompts, flat, batch_size)  # [M, N*K, O]
    combined = ensemble.members[0].combine(per_objective, None)  # [M, N*K]
    return combined.reshape(combined.shape[0], n, k)  # [M, N, K]


__all__ = ["PRIORITY", "Rule", "ensemble_member_scores", "priorities", "selection_order"]
