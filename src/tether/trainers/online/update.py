"""The update half of an online step, shared by PPO, GRPO and RLOO: minibatches of the step's
responses, and one optimiser step (backward, clip, step, clear). The loss is each algorithm's."""

from __future__ import annotations

import torch

from tether.parallel import gather_rows, global_sum, sum_metrics, world
from tether.trainers.online.config import OnlineTrainConfig


def single_update(cfg: OnlineTrainConfig, batch_size: int) -> bool:
    """One epoch of one minibatch: the policy updated is the one that sampled, so the importance
    ratio is exactly 1 and ``policy/approx_kl`` and ``policy/clip_frac`` are 0 by construction;
    the trainers then leave them out of the logs rather than report an uninformative 0."""
    return cfg.epochs == 1 and (cfg.minibatch_size <= 0 or cfg.minibatch_size >= batch_size)


def minibatches(n: int, size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle of rows 0..n−1 split into minibatches of ``size`` (0: one of all rows).

    ``n`` is this process's rows and ``size`` the global minibatch size: under torchrun each
    process takes ``size / processes`` rows of its own share per update (``check_online_split``
    makes both divide evenly, so every process runs the same number of updates)."""
    size = n if size <= 0 else min(size // world().size, n)
    order = torch.randperm(n, generator=generator)
    return [order[i : i + size] for i in range(0, n, size)]


def check_online_split(prompts_per_step: int, minibatch_size: int) -> None:
    """Under torchrun: every process must get the same number of whole prompts and of updates."""
    w = world()
    if not w.distributed:
        return
    if prompts_per_step % w.size:
        raise ValueError(f"train.prompts_per_step={prompts_per_step} must be a multiple of the {w.size} processes (each takes whole prompts)")
    if minibatch_size > 0 and minibatch_size % w.size:
        raise ValueError(f"train.minibatch_size={minibatch_size} must be a multiple of the {w.size} processes")


def global_tokens(mask: torch.Tensor) -> torch.Tensor:
    """The normaliser of a token-mean loss: the minibatch's response tokens over all processes (≥ 1)."""
    return global_sum(mask.sum()).clamp(min=1)


def token_share(local_mean: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """This process's share of a mean over every process's tokens, from its own token mean (a loss
    function's masked-mean metric): local mean x local tokens / ``tokens`` (``global_tokens``).
    Summed over processes it is the global token mean; a mean of the per-process means is not,
    when the processes hold different numbers of tokens."""
    return local_mean.detach() * mask.sum() / tokens


def optimizer_step(loss: torch.Tensor, params, optimizer, max_grad_norm: float, shards=None) -> torch.Tensor:
    """Backward, sum the gradients over processes, clip to ``max_grad_norm`` (<= 0: only measure),
    step and clear; returns the norm before clipping (a tensor: no host sync here). ``shards``:
    the run's ``PolicyShards`` (under FSDP backward already reduce-scattered the gradients)."""
    from tether.trainers.distributed import sync_gradients

    loss.backward()
    (shards.sync_gradients if shards is not None else sync_gradients)(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP: the norm over every process's shards
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach()


def mean_over_processes(values: dict[str, torch.Tensor | float], summed: tuple[str, ...] = ()) -> dict[str, float]:
    """Per-process figures as one number each, brought to the host once: the keys in ``summed``
    are each process's share of a global mean (divided by the global count) and are summed over
    processes; the others are averaged over processes, which is the step's mean when every process
    holds as many rows (``check_online_split``)."""
    processes = world().size
    return {k: v if k in summed else v / processes for k, v in sum_metrics(values).items()}


class UpdateMeans:
    """Means over a step's updates of what each update reports (grad norm, losses, ratio metrics).

    Values may be tensors: they are summed where they are and brought to the host once, in
    ``means``. Under torchrun the token means (the losses, entropy, approx-KL, clip fractions) are
    each process's part of the mean over every process's tokens (``token_share``), so they are
    summed over processes; every other value is a per-process figure (the grad norm is the same
    everywhere) and is averaged over them."""

    SUMMED_OVER_PROCESSES = ("loss/total", "loss/policy", "loss/value", "policy/entropy", "policy/approx_kl", "policy/clip_frac", "value/clip_frac")

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.updates = 0

    def add(self, piece: dict[str, torch.Tensor | float]) -> None:
        self.updates += 1
        for k, v in piece.items():
            v = v.detach().to(torch.float64) if isinstance(v, torch.Tensor) else v
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self) -> dict[str, float]:
        return {k: v / max(self.updates, 1) for k, v in mean_over_processes(self.sums, self.SUMMED_OVER_PROCESSES).items()}


def group_metrics(scores: torch.Tensor, advantages: torch.Tensor, group: int) -> dict[str, float]:
    """What GRPO and RLOO log about their groups: mean |advantage|, and the share of groups whose
    replies all scored the same (they carry no signal; many mean too easy or too hard prompts)."""
    scores, advantages = gather_rows(scores), gather_rows(advantages)  # [B] of every process (whole groups each)
    return {
        "advantage/abs_mean": float(advantages.abs().mean()),
        "reward/zero_std_groups": float((scores.view(-1, group).std(1) == 0).float().mean()),
    }


__all__ = ["UpdateMeans", "check_online_split", "global_tokens", "group_metrics", "mean_over_processes", "minibatches", "optimizer_step", "single_update", "token_share"]
