"""Pairwise preference-model loss: binary cross-entropy of P(a ≻ b) against the label.

A pairwise preference model scores an *ordered* pair, s(x, a, b), and predicts

    P(a ≻ b | x) = σ(s(x, a, b) − s(x, b, a)),

which is antisymmetric in its logit, so P(a ≻ b) + P(b ≻ a) = 1 holds by construction (see
``tether.models.preference``). The loss is the negative log-likelihood of the label y ∈ [0, 1]
(1: a won, 0: b won, anything between: a soft label, e.g. a judge's probability):

    loss = −[ y·log σ(d) + (1 − y)·log σ(−d) ],   d = s(x, a, b) − s(x, b, a).

A ranking best first expands into its ordered pairs (i before j, label 1), see
``tether.evaluate.reward_metrics.ranking_pairs`` for the same expansion on scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tether.losses.reward import pair_credit


def pairwise_preference_loss(
    score_ab: torch.Tensor,
    score_ba: torch.Tensor,
    labels: torch.Tensor | float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCE of σ(score_ab − score_ba) against ``labels`` -> (losses [N], metrics).

    ``score_ab`` [N] = s(x, a, b), ``score_ba`` [N] = s(x, b, a); ``labels`` [N] or a scalar in
    [0, 1], P(a ≻ b) observed. Metrics (detached means): ``accuracy`` (the predicted winner is the
    labelled one, ``losses.reward.pair_credit``: d = 0 counts ½; a label of exactly 1/2 counts as neither), ``prob`` (mean P(a ≻ b)), ``margin``
    (mean d).
    """
    d = score_ab - score_ba  # [N], antisymmetric logit
    y = torch.as_tensor(labels, dtype=d.dtype, device=d.device).expand_as(d)  # [N]
    if bool(((y < 0) | (y > 1)).any()):
        raise ValueError("preference labels must lie in [0, 1]")
    losses = -(y * F.logsigmoid(d) + (1 - y) * F.logsigmoid(-d))  # [N]
    dd = d.detach()
    # The labelled winner's logit is d·sign(y − ½): pair credit as in every other accuracy (a tied
    # score counts ½), and no credit where the label itself is a tie.
    credit = pair_credit(dd * torch.sign(y - 0.5)) * (y != 0.5).to(dd.dtype)  # [N]
    metrics = {"accuracy": credit.mean(), "prob": torch.sigmoid(dd).mean(), "margin": dd.mean()}
    return losses, metrics


__all__ = ["pairwise_preference_loss"]
