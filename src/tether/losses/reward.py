"""Reward-model losses: Bradley–Terry over pairs, Plackett–Luce over rankings.

A reward model maps (prompt, completion) to a scalar r. Both losses are negative
log-likelihoods of the observed preference under a choice model over those scalars. The
Plackett–Luce NLL here is also the listwise DPO loss (applied to implicit rewards), so the
ranking math lives once, in ``plackett_luce_nll``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F



def plackett_luce_nll(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of a best-first ranking under Plackett–Luce -> [N].

    For scores s_1..s_K of one ranking listed best first, the probability of that order is
    Π_k exp(s_k) / Σ_{j ≥ k} exp(s_j), so

        nll = Σ_k [ −s_k + logsumexp(s_k, …, s_K) ].

    The last term is always 0; with K = 2 this is −log σ(s_1 − s_2), Bradley–Terry.

    ``scores`` [N, K]; ``mask`` [N, K] bool (optional), True for the completions a ranking
    actually has, so rankings of different lengths share one tensor. Masked entries are left
    out of every sum and every "rest of the list" (the order among valid entries is their
    order along K).
    """
    n, k = scores.shape
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    mask = mask.bool()
    filled = torch.where(mask, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))  # [N, K]
    position = torch.arange(k, device=scores.device)
    # include[n, i, j]: s_j is in the denominator of choice i. The diagonal is always included so
    # that no row is all -inf (logsumexp's backward would give NaN there, even for masked rows).
    later = position.view(1, k) >= position.view(k, 1)  # [K, K], j >= i
    include = later & (mask.unsqueeze(1) | torch.eye(k, dtype=torch.bool, device=scores.device))  # [N, K, K]
    expanded = filled.unsqueeze(1).expand(n, k, k).masked_fill(~include, float("-inf"))  # [N, K, K]
    rest = torch.logsumexp(expanded, dim=-1)  # [N, K]
    per_choice = torch.where(mask, rest - filled, torch.zeros((), dtype=scores.dtype, device=scores.device))  # [N, K]
    return per_choice.sum(-1)


def pair_credit(diff: torch.Tensor) -> torch.Tensor:
    """Credit of each (better, worse) pair from its score gap: 1 where diff > 0, 1/2 where diff == 0
    (a tie is a coin flip), 0 otherwise; in ``diff``'s dtype, same shape."""
    return (diff > 0).to(diff.dtype) + 0.5 * (diff == 0).to(diff.dtype)


def pairwise_accuracy(better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs scored in order, ties counting 1/2 -> a detached scalar in the inputs' dtype.

    ``better``, ``worse`` [P]: the scores of the preferred and the other item of each pair. This
    one definition serves the training metrics (reward losses, the DPO family's implicit rewards)
    and ``tether rm eval``, so the accuracy of a model is the same number in both. No pairs: NaN.
    """
    return pair_credit(better.detach() - worse.detach()).mean()


def ranking_pairs(scores: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair (better, worse) of best-first rankings [N, K] -> (better [P], worse [P]).

    Pairs come ranking by ranking, and within a ranking as (i, j) with i < j in row-major order;
    ``mask`` [N, K] leaves out the slots a shorter ranking does not have. K = 2: one pair per row.
    """
    n, k = scores.shape
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    before = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)  # [K, K], i < j
    pairs = before & mask.unsqueeze(2) & mask.unsqueeze(1)  # [N, K, K]
    rows, i, j = pairs.nonzero(as_tuple=True)
    return scores[rows, i], scores[rows, j]


def ranking_accuracy(scores: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairwise_accuracy`` over every ordered pair of best-first rankings, and the pairs' mean gap.

    ``scores`` [N, K] best first; returns two detached scalars (0 and 0 when there is no pair).
    For K = 2 this is the usual pair accuracy and mean margin.
    """
    better, worse = ranking_pairs(scores.detach(), mask)  # [P], [P]
    if better.numel() == 0:
        zero = scores.new_zeros(()).detach()
        return zero, zero
    return pairwise_accuracy(better, worse), (better - worse).mean()


def bradley_terry_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    *,
    margin: torch.Tensor | float | None = None,
    centering_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry pairwise loss with an optional required margin and reward centring.

        loss = −log σ(r_c − r_r − m) + c·(r_c + r_r)²

    ``rewards_chosen``, ``rewards_rejected`` [N]; ``margin`` m: [N] or scalar (how strongly the
    annotator preferred, as in Llama 2's margin loss), 0 when None. The centring term
    (Eisenstein et al. 2023, "Helping or Herding") penalises the pair's summed reward; since
    (r_c + r_r)² = 4·(mean of the pair)², it pulls the reward scale to be centred on zero
    without changing which completion wins; ``centering_coef`` c is 0 (off) by default.

    Metrics: ``accuracy`` (r_c > r_r, ties 1/2), ``margin`` (mean r_c − r_r), ``rewards/chosen``,
    ``rewards/rejected`` (means).
    """
    diff = rewards_chosen - rewards_rejected  # [N]
    target = diff if margin is None else diff - margin
    losses = -F.logsigmoid(target)  # [N]
    if centering_coef:
        losses = losses + centering_coef * (rewards_chosen + rewards_rejected) ** 2
    d = diff.detach()
    metrics = {
        "accuracy": pairwise_accuracy(rewards_chosen, rewards_rejected),
        "margin": d.mean(),
        "rewards/chosen": rewards_chosen.detach().mean(),
        "rewards/rejected": rewards_rejected.detach().mean(),
    }
    return losses, metrics


def plackett_luce_loss(
    rewards: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    centering_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plackett–Luce ranking loss over K rewards listed best first.

        loss = Σ_k [−r_k + logsumexp(r_k..r_K)] + c·(Σ_k r_k)²

    ``rewards`` [N, K] best first; ``mask`` [N, K] bool for rankings with fewer than K
    completions. The centring term generalises Bradley–Terry's: the squared sum of a
    ranking's valid rewards. With K = 2 the loss equals ``bradley_terry_loss``.

    Metrics: ``accuracy`` (fraction of ordered pairs scored in order, ties 1/2), ``margin`` (mean gap of
    ordered pairs), ``rewards/best`` (mean reward of the top completion).
    """
    losses = plackett_luce_nll(rewards, mask)  # [N]
    valid = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    if centering_coef:
        total = torch.where(valid, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device)).sum(-1)  # [N]
        losses = losses + centering_coef * total**2
    accuracy, margin = ranking_accuracy(rewards, valid)
    metrics = {"accuracy": accuracy, "margin": margin, "rewards/best": rewards.detach()[:, 0].mean()}
    return losses, metrics
