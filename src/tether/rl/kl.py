"""KL divergence between the policy and the reference: per-token estimators and controllers.

For tokens sampled from π, with log-probs lp = log π(y_t) and ref = log π_ref(y_t), each
estimator below is a per-token sample whose mean estimates KL(π ‖ π_ref) (Schulman, "Approximating
KL divergence", 2020):

* k1 = lp − ref                                  unbiased, high variance, can be negative;
* k2 = ½·(lp − ref)²                             biased (low for nearby policies), ≥ 0;
* k3 = (exp(ref − lp) − 1) − (ref − lp)          unbiased, ≥ 0 (x − 1 − log x with x = π_ref/π).

The controllers turn a measured KL into the coefficient of the KL penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import torch


class KLEstimator(str, Enum):
    K1 = "k1"
    K2 = "k2"
    K3 = "k3"


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = lp − ref, per token, same shape as the inputs."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½·(lp − ref)², per token."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (exp(ref − lp) − 1) − (ref − lp), per token; ≥ 0 since eˣ ≥ 1 + x.

    expm1 keeps it accurate (and exactly 0) when ref ≈ lp.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[KLEstimator, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    KLEstimator.K1: kl_k1,
    KLEstimator.K2: kl_k2,
    KLEstimator.K3: kl_k3,
}


def kl_estimate(kind: KLEstimator | str, logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate of ``kind`` ("k1" | "k2" | "k3"); inputs and output [*]."""
    return KL_ESTIMATORS[KLEstimator(kind)](logprobs, ref_logprobs)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, coef: float):
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional control of the KL coefficient towards a target KL (Ziegler et al. 2019).

        error = clip(KL / target − 1, −0.2, 0.2)
        coef ← coef · (1 + error · n_steps / horizon)

    KL above target raises the coefficient (stronger pull to the reference), below lowers it;
    the clip bounds the change per update, ``horizon`` (in samples or steps, like
    ``n_steps``) sets how fast it moves.
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move the coefficient given the KL measured over the last ``n_steps``; returns it."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
