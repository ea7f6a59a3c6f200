"""Critic-free policy gradients from groups of samples: GRPO and RLOO (``tether grpo | rloo``).

Each prompt gets G responses; a response's advantage is its reward relative to the others in its
group, so no value function is trained. The two algorithms differ in two places only, both
looked up in ``CRITIC_FREE`` by the ``CriticFree`` enum:

* the advantage: GRPO (Shao et al. 2024) standardises within the group (mean, optionally std);
  RLOO (Ahmadian et al. 2024) subtracts the mean of the *other* G − 1 rewards;
* where the KL to the reference goes: GRPO adds β·KL_t to the per-token loss (k3 by default);
  RLOO subtracts β·Σ_t KL_t from the sequence reward before the baseline (k1, as in the paper).

The loss is the clipped surrogate (with one epoch and one minibatch the ratio is 1 and it is the
plain policy gradient, and approx-KL and clip fraction, 0 by construction, are not logged),
averaged over all response tokens of the minibatch. With a fixed β = 0 no reference is built or run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

import torch

from tether.config import opt
from tether.trainers.online import KLConfig, OnlineSections, OnlineTrainConfig


class CriticFree(str, Enum):
    GRPO = "grpo"
    RLOO = "rloo"


@dataclass
class GRPOSection:
    clip_eps: float = opt(0.2, "Clip range of the importance ratio.")
    beta: float = opt(0.04, "Weight of the per-token KL(policy || reference) term in the loss (the initial value when kl.adaptive).")
    normalize_std: bool = opt(True, "Divide advantages by the group's reward std (false: mean baseline only, as Dr. GRPO).")


@dataclass
class RLOOSection:
    clip_eps: float = opt(0.2, "Clip range of the importance ratio (matters only with train.epochs > 1 or several minibatches).")


@dataclass
class CriticFreeSpec:
    advantages: Callable[[torch.Tensor, int, object], torch.Tensor]  # (sequence rewards [N*G], G, section) -> [N*G]
    kl_in_loss: bool  # True: β·KL_t in the per-token loss; False: −β·Σ_t KL_t in the reward


def _grpo_advantages(rewards: torch.Tensor, group: int, section: GRPOSection) -> torch.Tensor:
    from tether.rl.advantages import group_advantages

    return group_advantages(rewards, group, normalize_std=section.normalize_std)


def _rloo_advantages(rewards: torch.Tensor, group: int, section: RLOOSection) -> torch.Tensor:
    from tether.rl.advantages import leave_one_out_advantages

    return leave_one_out_advantages(rewards, group)


CRITIC_FREE: dict[CriticFree, CriticFreeSpec] = {
    CriticFree.GRPO: CriticFreeSpec(_grpo_advantages, kl_in_loss=True),
    CriticFree.RLOO: CriticFreeSpec(_rloo_advantages, kl_in_loss=False),
}


def _train(**kw) -> Callable[[], OnlineTrainConfig]:
    return lambda: OnlineTrainConfig(**{"epochs": 1, "minibatch_size": 0, "prompts_per_step": 4, "samples_per_prompt": 4, "lr": 1e-5, **kw})


@dataclass
class GRPOConfig(OnlineSections):
    """GRPO: group-relative advantages, clipped surrogate, KL to the reference in the loss."""

    kl: KLConfig = field(default_factory=lambda: KLConfig(estimator="k3"))
    train: OnlineTrainConfig = field(default_factory=_train(output_dir="runs/grpo"))
    grpo: GRPOSection = field(default_factory=GRPOSection)


@dataclass
class RLOOConfig(OnlineSections):
    """RLOO: REINFORCE with a leave-one-out baseline over the group, KL penalty in the reward."""

    train: OnlineTrainConfig = field(default_factory=_train(output_dir="runs/rloo"))
    rloo: RLOOSection = field(default_factory=RLOOSection)


def run_critic_free(cfg, kind: CriticFree, reward_source=None, gold_source=None) -> dict:
    """The GRPO / RLOO loop; saves ``<output_dir>/model`` and returns the summary rows."""
    from tether.losses.policy import grpo_loss, ppo_clip_loss
    from tether.losses.reduce import masked_mean, token_mean_global
    from tether.rl.kl import kl_estimate
    from tether.trainers.common import ensure_finite
    from tether.trainers.online import (
        ResponseBatch,
        Timer,
        build_optimizer,
        build_scheduler,
        make_kl_controller,
        minibatches,
        response_hidden,
        response_logprobs,
        rollout_metrics,
        single_update,
    )
    from tether.trainers.online_run import StepState, collect, optimizer_step, start_run

    spec = CRITIC_FREE[kind]
    section = getattr(cfg, kind.value)
    started = time.time()
    t = cfg.train
    group = t.samples_per_prompt
    if group < 2:
        raise ValueError(f"{kind.value} needs train.samples_per_prompt >= 2 (a group to compare within), got {group}")
    kl_cfg = replace(cfg.kl, coef=section.beta) if spec.kl_in_loss else cfg.kl
    run = start_run(cfg, reward_source, gold_source, kl=kl_cfg)
    params = [q for q in run.policy.parameters() if q.requires_grad]
    optimizer = build_optimizer([{"params": params}], t)
    scheduler = build_scheduler(optimizer, t.steps, t)
    kl_ctl = make_kl_controller(kl_cfg)
    state = StepState(run, cfg, run.policy, optimizer, scheduler, kl_ctl, kind.value, started)
    temperature, chunk = cfg.sampling.temperature, cfg.model.chunk_size
    # With one pass of one minibatch the sampling policy is the current one: the ratio is exactly 1
    # and the rollout's own log-probs serve as the old ones, saving a forward pass.
    one_update = single_update(t, t.prompts_per_step * group)
    run.policy.train()
    for step in range(state.start_step, t.steps):
        timer = Timer()
        got = collect(run, cfg, step, timer)
        rollout, scores, mask = got.rollout, got.scores, got.batch.mask  # mask: [B, Tr]
        old_lp = rollout.logprobs.float()  # [B, Tr], under softmax(logits / temperature)
        ref_lp = kl = None  # no reference: β is fixed at 0
        if run.reference is not None:
            with timer("reference"):
                ref_lp = run.reference.logprobs(run.policy, got.batch, temperature, chunk)  # [B, Tr]
            kl = torch.where(mask, kl_estimate(cfg.kl.estimator, old_lp, ref_lp), torch.zeros(()))  # [B, Tr]
        rewards = scores if spec.kl_in_loss or kl is None else scores - kl_ctl.value * kl.sum(1)  # [B]
        advantages = spec.advantages(rewards, group, section)  # [B]

        with timer("update"):
            sums: dict[str, float] = {}
            updates = 0
            shuffle = torch.Generator().manual_seed(t.seed * 7919 + step)
            for _epoch in range(t.epochs):
                for rows in minibatches(len(rollout.texts), t.minibatch_size, shuffle):
                    sub = ResponseBatch.from_rollout(rollout, run.pad_id, rows)
                    m = sub.mask  # [b, Tr]
                    logprobs, entropy = response_logprobs(run.policy, response_hidden(run.policy, sub), sub, temperature, chunk, entropy=True)  # [b, Tr]
                    old = None if one_update else old_lp[rows]
                    if spec.kl_in_loss and ref_lp is not None:
                        losses, lm = grpo_loss(logprobs, old, ref_lp[rows], advantages[rows], m, clip_eps=section.clip_eps, beta=kl_ctl.value, kl_estimator=cfg.kl.estimator)
                    else:
                        losses, lm = ppo_clip_loss(logprobs, old, advantages[rows], m, clip_eps=section.clip_eps)
                    loss = token_mean_global(losses, m, m.sum().clamp(min=1))
                    ensure_finite(loss.detach(), step + 1)
                    updates += 1
                    piece = {
                        "grad_norm": optimizer_step(loss, params, optimizer, t.max_grad_norm),
                        "loss/total": float(loss.detach()),
                        "policy/entropy": float(masked_mean(entropy, m)),
                    }
                    if not one_update:  # else the ratio is 1: both 0 by construction
                        piece["policy/approx_kl"] = float(lm["approx_kl"])
                        piece["policy/clip_frac"] = float(lm["clipfrac"])
                    for k, v in piece.items():
                        sums[k] = sums.get(k, 0.0) + v
            metrics = {k: v / max(updates, 1) for k, v in sums.items()}
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()

        metrics.update(rollout_metrics(rollout, scores, kl, got.gold))
        metrics.update(got.extras)
        metrics.update(timer.metrics())
        metrics["kl/coef"] = kl_ctl.value
        metrics["advantage/abs_mean"] = float(advantages.abs().mean())
        # Groups whose responses all scored the same carry no signal; many of them mean too easy or hard prompts.
        metrics["reward/zero_std_groups"] = float((scores.view(-1, group).std(1) == 0).float().mean())
        if state.end_step(step, metrics, len(rollout.texts)):
            break
    return state.finish()


def run_grpo(cfg: GRPOConfig, reward_source=None, gold_source=None) -> dict:
    return run_critic_free(cfg, CriticFree.GRPO, reward_source, gold_source)


def run_rloo(cfg: RLOOConfig, reward_source=None, gold_source=None) -> dict:
    return run_critic_free(cfg, CriticFree.RLOO, reward_source, gold_source)


__all__ = ["CRITIC_FREE", "CriticFree", "CriticFreeSpec", "GRPOConfig", "GRPOSection", "RLOOConfig", "RLOOSection", "run_critic_free", "run_grpo", "run_rloo"]
