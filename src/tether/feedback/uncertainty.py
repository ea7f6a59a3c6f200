"""Uncertainty-aware labelling: a reward-model ensemble labels a pair, and the pair is weighted or
dropped by how confident the members are in that label.

The rule (``confidence_rule``), for a pair (a, b) and K ensemble members with reward gaps
d_k = r_k(a) − r_k(b):

* each member's Bradley–Terry preference p_k = σ(d_k / T) (T = ``temperature``, 1 by default);
* the ensemble's label: P̄ = mean_k p_k; a wins when P̄ > ½, b when P̄ < ½, a tie (P̄ = ½) is dropped;
* ``weight``: the pair counts w = |2·P̄ − 1| in the loss (0 when the members, on average, cannot
  tell the replies apart; 1 when every member is sure of the same side);
* ``drop``: the pair is kept with weight 1 unless its mean gap is within ``k`` spreads of zero,
  |mean_k d_k| ≤ k · std_k d_k (sample std over members, as ``RewardEnsemble.score``): the
  members do not agree on the side well enough for the label to be trusted. k = 0 keeps every
  pair whose mean gap is not exactly 0;
* ``off``: every non-tied pair with weight 1.

The weights go into the DPO loss through ``tether.losses.reduce.example_mean`` (Σ w·loss / N
over the N labelled pairs: a batch of doubtful pairs moves the policy less).
"""

from __future__ import annotations

import torch

RULES = ("off", "weight", "drop")


def confidence_rule(member_gaps: torch.Tensor, rule: str, k: float = 1.0, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(P̄ [N], weights [N]) from member reward gaps ``member_gaps`` [K, N] (first minus second)
    under ``rule`` ('off', 'weight' or 'drop', see the module docstring). A weight of 0 means the
    pair is dropped; ties (P̄ = ½) get weight 0 under every rule."""
    if rule not in RULES:
        raise ValueError(f"uncertainty rule must be one of {RULES}, got {rule!r}")
    if member_gaps.dim() != 2:
        raise ValueError(f"member_gaps must be [members, pairs], got shape {tuple(member_gaps.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    gaps = member_gaps.float()  # [K, N]
    p_mean = torch.sigmoid(gaps / temperature).mean(0)  # [N]
    decided = (p_mean != 0.5).float()  # [N]
    if rule == "weight":
        return p_mean, (2 * p_mean - 1).abs() * decided
    if rule == "drop":
        from tether.models.reward_ensemble import mean_and_spread

        mean, spread = mean_and_spread(gaps)  # [N], [N]
        trusted = mean.abs() > k * spread  # [N]
        return p_mean, trusted.float() * decided
    return p_mean, decided


class EnsembleJudge:
    """A pairwise judge over a saved reward-model ensemble: P(first ≻ second) = P̄ above, and
    ``label(prompts, first, second) -> (P̄ [N], weights [N])`` under the configured rule."""

    def __init__(self, ensemble, rule: str = "weight", k: float = 1.0, temperature: float = 1.0, batch_size: int = 16):
        from tether.models.reward_ensemble import RewardEnsemble, is_ensemble_dir

        if isinstance(ensemble, (str, bytes)) or hasattr(ensemble, "__fspath__"):
            if not is_ensemble_dir(ensemble):
                raise ValueError(f"{ensemble}: not a saved reward-model ensemble (tether rm train with rm.ensemble_size > 1); the uncertainty rule needs the members' rewards")
            self.name = str(ensemble)
            ensemble = RewardEnsemble.from_pretrained(ensemble)
        else:
            self.name = "ensemble"
        confidence_rule(torch.zeros(1, 1), rule, k, temperature)  # validate the settings now, not at the first step
        self.ensemble, self.rule, self.k, self.temperature, self.batch_size = ensemble, rule, k, temperature, batch_size

    def member_gaps(self, prompts: list, first: list[str], second: list[str]) -> torch.Tensor:
        """Each member's combined reward of ``first`` minus ``second`` -> [K, N]."""
        n = len(first)
        combine = self.ensemble.members[0].combine
        rewards = combine(self.ensemble.score_all(list(prompts) * 2, list(first) + list(second), self.batch_size))  # [K, 2N]
        return rewards[:, :n] - rewards[:, n:]

    def label(self, prompts: list, first: list[str], second: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return confidence_rule(self.member_gaps(prompts, first, second), self.rule, self.k, self.temperature)

    def __call__(self, prompts: list, first: list[str], second: list[str]) -> torch.Tensor:
        return self.label(prompts, first, second)[0]


def weight_metrics(weights: torch.Tensor) -> dict[str, float]:
    """``label/dropped`` (fraction of pairs with weight 0) and ``label/weight_mean`` (mean weight
    of the kept pairs) for a step's or a round's weights [N]."""
    n = max(weights.numel(), 1)
    kept = weights > 0
    return {"label/dropped": 1.0 - float(kept.sum()) / n, "label/weight_mean": float(weights[kept].mean()) if kept.any() else 0.0}


__all__ = ["RULES", "EnsembleJudge", "confidence_rule", "weight_metrics"]
