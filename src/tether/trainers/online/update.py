"""The update half of an online step, shared by PPO, GRPO and RLOO: minibatches of the step's
responses, and one optimiser step (backward, clip, step, clear). The loss is each algorithm's."""

from __future__ import annotations

import torch

from tether.trainers.online.config import OnlineTrainConfig


def single_update(cfg: OnlineTrainConfig, batch_size: int) -> bool:
    """One epoch of one minibatch: the policy updated is the one that sampled, so the importance
    ratio is exactly 1 and ``policy/approx_kl`` and ``policy/clip_frac`` are 0 by construction;
    the trainers then leave them out of the logs rather than report an uninformative 0."""
    return cfg.epochs == 1 and (cfg.minibatch_size <= 0 or cfg.minibatch_size >= batch_size)


def minibatches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of rows 0..n−1 split into minibatches of ``size`` (0: one of all rows)."""
    size = n if size <= 0 else min(size, n)
    order = torch.randperm(n, generator=generator)
    return [order[i : i + size] for i in range(0, n, size)]


def optimizer_step(loss: torch.Tensor, params, optimizer, max_grad_norm: float) -> float:
    """Backward, clip to ``max_grad_norm`` (<= 0: only measure), step and clear; returns the norm before clipping."""
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(grad_norm)


class UpdateMeans:
    """Means over a step's updates of what each update reports (grad norm, losses, ratio metrics)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.updates = 0

    def add(self, piece: dict[str, float]) -> None:
        self.updates += 1
        for k, v in piece.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        return {k: v / max(self.updates, 1) for k, v in self.sums.items()}


def group_metrics(scores: torch.Tensor, advantages: torch.Tensor, group: int) -> dict[str, float]:
    """What GRPO and RLOO log about their groups: mean |advantage|, and the share of groups whose
    replies all scored the same (they carry no signal; many mean too easy or too hard prompts)."""
    return {
        "advantage/abs_mean": float(advantages.abs().mean()),
        "reward/zero_std_groups": float((scores.view(-1, group).std(1) == 0).float().mean()),
    }


__all__ = ["UpdateMeans", "group_metrics", "minibatches", "optimizer_step", "single_update"]
