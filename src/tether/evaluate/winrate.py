"""Win-rate of a policy against a reference: judging, ties, length control and intervals.

Verdicts. A verdict per (prompt, policy response, reference response) is 1 (the policy wins),
0 (the reference wins) or 1/2 (a tie), so the win-rate counts ties as halves. A judge whose
answer does not depend on the order it is shown the two responses (``RewardJudge``: a comparison
of two rewards; ``PreferenceJudge``: a preference model antisymmetric by construction) is asked
once. Any other judge (an AI judge) is asked in both orders; when the two orders pick different
winners the verdict is a tie, and the fraction of such disagreements is reported
(``order_disagreement``) as a measure of the judge's position bias.

Length control (Dubois et al. 2024, "Length-Controlled AlpacaEval"). A judge that likes long
answers rewards a policy that only learned to talk longer. AlpacaEval 2 fits the judge's
preferences with a logistic model whose length feature is tanh(Δ / std(Δ)), Δ the length of the
model's output minus the baseline's, and reports the predicted win-rate at Δ = 0. Here

    P(policy wins) = σ(a + b · tanh(Δ / sd(Δ))),     Δ = policy tokens − reference tokens,

fitted to the verdicts as soft targets (a tie is the target 1/2) by maximum likelihood with a weak
ridge b² / (2C) on b added to the summed log-loss (``c``, sklearn's convention; C = 100 as in
AlpacaEval's fit without cross-validation: perfectly length-driven verdicts are separable, and b
would run off to infinity), and the length-controlled win-rate is σ(a). AlpacaEval measures length in characters
and adds an instruction-difficulty term fitted on its own leaderboard; this has neither (tokens,
and no per-prompt term). sd(Δ) = 0 (all length differences equal) leaves no length signal: the
feature is 0 and σ(a) is the raw win-rate.

Intervals. The paired bootstrap over prompts (``tether.evaluate.stats``); the logistic model,
including sd(Δ), is refitted in every round so the interval covers the fit too.
"""

from __future__ import annotations

import torch

from tether.evaluate.stats import (
    bootstrap_counts,
    percentile_interval,
    row_weights,
    weighted_mean,
)


def hard_verdict(prob: torch.Tensor) -> torch.Tensor:
    """P(first ≻ second) [B] -> 1 where above 1/2, 0 where below, 1/2 at exactly 1/2."""
    p = prob.double()
    return (p > 0.5).double() + 0.5 * (p == 0.5).double()


def order_invariant(judge) -> bool:
    """Whether a judge answers the same whichever response it is shown first (then it is asked once).
    Judges say so with an ``order_invariant = True`` attribute (``RewardJudge`` does); others are not."""
    return bool(getattr(judge, "order_invariant", False))


def judge_pairs(judge, prompts: list[str], policy: list[str], reference: list[str]) -> dict[str, torch.Tensor]:
    """Verdicts [B] (1 policy wins, 1/2 tie, 0 reference wins), the judge's probability [B] that the
    policy's response is better (both orders averaged for an order-dependent judge) and, for such a
    judge, where the two orders disagreed [B] (those verdicts are ties)."""
    from tether.feedback.judges import both_orders

    if order_invariant(judge):
        prob = judge(prompts, policy, reference).double()  # [B]
        return {"verdict": hard_verdict(prob), "prob": prob}
    asked = both_orders(judge, prompts, policy, reference)
    verdict = torch.where(asked.disagree, torch.full_like(asked.prob.double(), 0.5), hard_verdict(asked.prob))  # [B]
    return {"verdict": verdict, "prob": asked.prob.double(), "disagree": asked.disagree}


def length_feature(delta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """tanh(Δ / sd_w(Δ)) per round: Δ [N], weights [R, N] -> [R, N]; 0 where sd is 0.

    sd_w is the weighted sample standard deviation (the bootstrap round's own, n − 1 with n = Σ w)."""
    d = delta.double()
    total = weights.sum(1, keepdim=True)  # [R, 1]
    mean = (weights * d).sum(1, keepdim=True) / total  # [R, 1]
    var = (weights * (d - mean) ** 2).sum(1, keepdim=True) / (total - 1).clamp_min(1.0)  # [R, 1]
    sd = var.sqrt()  # [R, 1]
    return torch.where(sd > 0, torch.tanh(d / sd.clamp_min(1e-300)), torch.zeros(()))  # [R, N]


def _objective(a, b, x, y, weights, l2):
    """Weighted mean binary cross-entropy of σ(a + b x) against soft targets y, plus (l2/2)·b²: [R] (l2 [R] or a float)."""
    z = a[:, None] + b[:, None] * x  # [R, N]
    nll = torch.nn.functional.softplus(z) - y * z  # [R, N] = −y log σ(z) − (1 − y) log(1 − σ(z))
    return (weights * nll).sum(1) / weights.sum(1) + 0.5 * l2 * b**2


def fit_length_logistic(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, l2=0.0, iterations: int = 100, tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit σ(a + b x) to soft targets y in [0, 1], one fit per round: x [R, N], y [N], weights [R, N]
    -> (a [R], b [R]), minimising the weighted mean log-loss + (l2/2)·b² (``l2`` a float or [R]).

    Damped Newton: the 2×2 Hessian of the (convex) objective is inverted in closed form for every
    round at once, and each round takes the best of the step sizes 1, 1/2, …, 1/64 (the full Newton
    step can overshoot when the data are nearly separable)."""
    x, y, w = x.double(), y.double(), weights.double()
    rounds = w.shape[0]
    a = torch.zeros(rounds, dtype=torch.float64)  # [R]
    b = torch.zeros(rounds, dtype=torch.float64)  # [R]
    total = w.sum(1)  # [R]
    steps = torch.tensor([2.0**-k for k in range(7)], dtype=torch.float64)  # [K]
    for _ in range(iterations):
        p = torch.sigmoid(a[:, None] + b[:, None] * x)  # [R, N]
        r = w * (p - y)  # [R, N]
        s = w * p * (1 - p)  # [R, N]
        g_a = r.sum(1) / total  # [R]
        g_b = (r * x).sum(1) / total + l2 * b  # [R]
        h_aa = s.sum(1) / total  # [R]
        h_ab = (s * x).sum(1) / total  # [R]
        h_bb = (s * x * x).sum(1) / total + l2  # [R]
        det = (h_aa * h_bb - h_ab**2).clamp_min(1e-300)  # [R]
        d_a = (h_bb * g_a - h_ab * g_b) / det  # [R] Newton direction H⁻¹ g
        d_b = (h_aa * g_b - h_ab * g_a) / det  # [R]
        current = _objective(a, b, x, y, w, l2)  # [R]
        full = _objective(a - d_a, b - d_b, x, y, w, l2)  # [R]
        if bool((full < current).all()):  # the usual case: no round needs a shorter step
            new_a, new_b = a - d_a, b - d_b
        else:
            trial_a = a[:, None] - steps * d_a[:, None]  # [R, K]
            trial_b = b[:, None] - steps * d_b[:, None]  # [R, K]
            losses = torch.stack([full] + [_objective(trial_a[:, k], trial_b[:, k], x, y, w, l2) for k in range(1, len(steps))], 1)  # [R, K]
            best = losses.argmin(1, keepdim=True)  # [R, 1]
            improve = losses.gather(1, best).squeeze(1) < current  # [R]; a converged round stays put
            new_a = torch.where(improve, trial_a.gather(1, best).squeeze(1), a)
            new_b = torch.where(improve, trial_b.gather(1, best).squeeze(1), b)
        moved = torch.maximum((new_a - a).abs(), (new_b - b).abs()).max()
        a, b = new_a, new_b
        if moved < tol:
            break
    return a, b


def length_controlled(verdict: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor, c: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Length-controlled win-rate σ(a) and the fitted length slope b per round: verdict [N], Δ [N],
    weights [R, N] -> ([R], [R]). ``c``: the ridge b² / (2c) on the summed log-loss."""
    if c <= 0:
        raise ValueError(f"the length fit's c (inverse ridge strength) must be positive, got {c}")
    x = length_feature(delta, weights)  # [R, N]
    l2 = 1.0 / (c * weights.double().sum(1))  # [R]: the ridge on the summed loss, for the mean loss
    a, b = fit_length_logistic(x, verdict, weights, l2)
    return torch.sigmoid(a), b


def win_rate_report(
    verdict: torch.Tensor,
    policy_length: torch.Tensor,
    reference_length: torch.Tensor,
    prompt_index: torch.Tensor,
    *,
    rounds: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    c: float = 100.0,
    prob: torch.Tensor | None = None,
    disagree: torch.Tensor | None = None,
) -> dict[str, float]:
    """Raw and length-controlled win-rates with paired-bootstrap percentile intervals.

    verdict [N] in {0, 1/2, 1}; lengths [N] in tokens; prompt_index [N] (rows of one prompt are
    resampled together); ``prob`` [N] the judge's probabilities (adds ``win_prob``); ``disagree``
    [N] where the orders disagreed (adds ``order_disagreement``)."""
    verdict = verdict.double()
    index = torch.as_tensor(prompt_index).long()
    delta = policy_length.double() - reference_length.double()  # [N]
    ones = torch.ones(1, verdict.numel(), dtype=torch.float64)  # [1, N] the sample itself
    lc, slope = length_controlled(verdict, delta, ones, c)
    report = {
        "n": int(verdict.numel()),
        "prompts": int(index.unique().numel()),
        "win_rate": float(verdict.mean()),
        "wins": int((verdict == 1).sum()),
        "ties": int((verdict == 0.5).sum()),
        "losses": int((verdict == 0).sum()),
        "lc_win_rate": float(lc[0]),
        "lc_length_slope": float(slope[0]),
        "length_delta_mean": float(delta.mean()),
    }
    if prob is not None:
        report["win_prob"] = float(prob.double().mean())
    if disagree is not None:
        report["order_disagreement"] = float(disagree.double().mean())
    if rounds > 0:
        # Prompts are renumbered 0..P-1 so the counts cover exactly the prompts present.
        _, dense = torch.unique(index, return_inverse=True)
        weights = row_weights(bootstrap_counts(int(dense.max()) + 1, rounds, seed), dense)  # [R, N]
        report["win_rate_ci"] = list(percentile_interval(weighted_mean(verdict, weights), confidence))
        report["lc_win_rate_ci"] = list(percentile_interval(length_controlled(verdict, delta, weights, c)[0], confidence))
        report.update(bootstrap_rounds=rounds, confidence=confidence)
    return report


__all__ = ["fit_length_logistic", "hard_verdict", "judge_pairs", "length_controlled", "length_feature", "order_invariant", "win_rate_report"]
