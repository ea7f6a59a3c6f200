"""Reward-model evaluation math: pairwise accuracy, calibration, reward distribution, length baseline.

All functions take plain tensors of per-pair values, so they are tested by hand and reused by
``tether rm eval``, the trainer's final report and the benchmarks. Pair accuracy and the pair
enumeration of rankings are ``tether.losses.reward.pairwise_accuracy`` / ``ranking_pairs``, the
same functions the training metrics use (ties count 1/2 in both).

Calibration. A Bradley–Terry reward model predicts P(chosen beats rejected) = σ(r_c − r_r). We
score it as a classifier of "which of the two wins": its confidence is max(p, 1 − p), it is
right when p > 1/2, and the expected calibration error with B equal-width bins over the
confidence range [1/2, 1] is

    ECE = Σ_b (n_b / N) · | accuracy_b − mean confidence_b |.

A model whose 80%-confident calls are right 80% of the time has ECE 0.
"""

from __future__ import annotations

import torch

from tether.losses.reward import pair_credit, pairwise_accuracy


def length_baseline_accuracy(length_chosen: torch.Tensor, length_rejected: torch.Tensor) -> float:
    """Accuracy of the rule "the longer response wins" (equal lengths count 1/2). [N], [N] -> float."""
    return float(pairwise_accuracy(length_chosen.double(), length_rejected.double()))


def calibration_bins(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, num_bins: int = 10) -> list[dict[str, float]]:
    """Per-bin count, mean confidence and accuracy of σ(r_c − r_r) (see the module docstring)."""
    p = torch.sigmoid(rewards_chosen.double() - rewards_rejected.double())  # [N]
    confidence = torch.maximum(p, 1 - p)  # [N], in [1/2, 1]
    correct = pair_credit(p - 0.5)  # [N]
    index = ((confidence - 0.5) / 0.5 * num_bins).floor().clamp(0, num_bins - 1).long()  # [N]; confidence 1 joins the top bin
    bins = []
    for b in range(num_bins):
        in_bin = index == b
        n = int(in_bin.sum())
        bins.append({
            "low": 0.5 + 0.5 * b / num_bins,
            "high": 0.5 + 0.5 * (b + 1) / num_bins,
            "count": n,
            "confidence": float(confidence[in_bin].mean()) if n else float("nan"),
            "accuracy": float(correct[in_bin].mean()) if n else float("nan"),
        })
    return bins


def expected_calibration_error(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, num_bins: int = 10) -> float:
    """ECE of σ(r_c − r_r) with ``num_bins`` equal-width confidence bins over [1/2, 1]."""
    total = rewards_chosen.numel()
    if total == 0:
        return float("nan")
    bins = calibration_bins(rewards_chosen, rewards_rejected, num_bins)
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])


def reward_distribution(rewards: torch.Tensor) -> dict[str, float]:
    """Mean, standard deviation and quantiles of a set of rewards [M]."""
    r = rewards.double().flatten()
    q = torch.quantile(r, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64))
    return {
        "mean": float(r.mean()),
        "std": float(r.std(correction=0)),
        "min": float(q[0]),
        "p10": float(q[1]),
        "median": float(q[2]),
        "p90": float(q[3]),
        "max": float(q[4]),
    }


def reward_model_report(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    length_chosen: torch.Tensor,
    length_rejected: torch.Tensor,
    spread_chosen: torch.Tensor | None = None,
    spread_rejected: torch.Tensor | None = None,
    num_bins: int = 10,
) -> dict[str, float]:
    """Everything ``tether rm eval`` prints, for N (better, worse) pairs."""
    report = {
        "pairs": float(rewards_chosen.numel()),
        "accuracy": float(pairwise_accuracy(rewards_chosen.double(), rewards_rejected.double())),
        "length_baseline_accuracy": length_baseline_accuracy(length_chosen, length_rejected),
        "ece": expected_calibration_error(rewards_chosen, rewards_rejected, num_bins),
        "margin_mean": float((rewards_chosen - rewards_rejected).double().mean()),
        "reward_chosen_mean": float(rewards_chosen.double().mean()),
        "reward_rejected_mean": float(rewards_rejected.double().mean()),
    }
    report.update({f"reward_{k}": v for k, v in reward_distribution(torch.cat([rewards_chosen, rewards_rejected])).items()})
    if spread_chosen is not None and spread_rejected is not None:
        report["ensemble_spread_mean"] = float(torch.cat([spread_chosen, spread_rejected]).double().mean())
    return report


__all__ = [
    "calibration_bins",
    "expected_calibration_error",
    "length_baseline_accuracy",
    "reward_distribution",
    "reward_model_report",
]
