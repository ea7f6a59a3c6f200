"""RLOO (Ahmadian et al. 2024): ``tether rloo``. REINFORCE with a leave-one-out group baseline.

One step, top to bottom in ``run_rloo``:

1. ``collect``: P prompts, G replies to each from the policy, the reward source's scores [P*G];
2. the reference's log-probs of the replies (skipped when β is fixed at 0: no reference at all),
   and the KL penalty in the reward: r = score − β·Σ_t KL_t (``kl.estimator``, k1 as in the paper);
3. advantages: each reply's reward minus the mean of the other G − 1 in its group;
4. ``epochs`` passes over minibatches: the clipped surrogate (the plain policy gradient with one
   epoch of one minibatch, where approx-KL and clip fraction, 0 by construction, go unlogged),
   averaged over the minibatch's response tokens; ``optimizer_step``;
5. the KL controller (if ``kl.adaptive``) moves β; ``StepState`` logs and checkpoints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tether.config import opt
from tether.trainers.online.config import OnlineSections, OnlineTrainConfig, group_train_defaults


@dataclass
class RLOOSection:
    clip_eps: float = opt(0.2, "Clip range of the importance ratio (matters only with train.epochs > 1 or several minibatches).")


@dataclass
class RLOOConfig(OnlineSections):
    """RLOO: REINFORCE with a leave-one-out baseline over the group, KL penalty in the reward."""

    train: OnlineTrainConfig = field(default_factory=group_train_defaults("runs/rloo"))
    rloo: RLOOSection = field(default_factory=RLOOSection)


def run_rloo(cfg: RLOOConfig, reward_source=None, gold_source=None) -> dict:
    """Train with RLOO; saves ``<output_dir>/model`` and returns the summary rows.

    ``reward_source`` / ``gold_source`` (objects with ``score(prompts, responses)``) replace
    ``reward.source`` / ``reward.gold`` when given (Python callers, tests).
    """
    from tether.losses.policy import ppo_clip_loss
    from tether.losses.reduce import token_mean_global
    from tether.rl.advantages import leave_one_out_advantages
    from tether.rl.kl import kl_estimate
    from tether.trainers.common import build_optimizer, build_scheduler, ensure_finite
    from tether.trainers.online.batch import ResponseBatch, policy_logprobs
    from tether.trainers.online.rollout import collect
    from tether.trainers.online.run import StepState, Timer, make_kl_controller, rollout_metrics, start_run
    from tether.trainers.online.update import UpdateMeans, global_tokens, group_metrics, minibatches, optimizer_step, single_update, token_share

    started = time.time()
    t, r = cfg.train, cfg.rloo
    group = t.samples_per_prompt
    if group < 2:
        raise ValueError(f"rloo needs train.samples_per_prompt >= 2 (a group to compare within), got {group}")
    run = start_run(cfg, reward_source, gold_source)
    params = [q for q in run.policy.parameters() if q.requires_grad]
    optimizer = build_optimizer([{"params": params}], t)
    scheduler = build_scheduler(optimizer, t.max_steps, t)
    kl_ctl = make_kl_controller(cfg.kl)
    state = StepState(run, cfg, run.policy, optimizer, scheduler, kl_ctl, "rloo", started)
    temperature, chunk = cfg.sampling.temperature, cfg.model.chunk_size
    # With one pass of one minibatch the sampling policy is the current one: the ratio is exactly 1
    # and the rollout's own log-probs serve as the old ones, saving a forward pass.
    one_update = single_update(t, t.prompts_per_step * group)
    run.policy.train()
    for step in range(state.start_step, t.max_steps):
        timer = Timer()
        got = collect(run, cfg, step, timer)  # 1. prompts, G replies each, scores
        rollout, scores, mask = got.rollout, got.scores, got.batch.mask  # mask: [B, Tr]
        old_lp = rollout.logprobs.float()  # [B, Tr], under softmax(logits / temperature)
        rewards, kl = scores, None  # 2. no reference: β is fixed at 0 and the rewards are the scores
        if run.reference is not None:
            with timer("reference"):
                ref_lp = run.reference.logprobs(run.sampler, got.batch, temperature, chunk)  # [B, Tr]; the whole policy (adapters off) under FSDP too
            kl = torch.where(mask, kl_estimate(cfg.kl.estimator, old_lp, ref_lp), torch.zeros(()))  # [B, Tr]
            rewards = scores - kl_ctl.value * kl.sum(1)  # [B]
        advantages = leave_one_out_advantages(rewards, group)  # 3. [B]

        with timer("update"):  # 4.
            means = UpdateMeans()
            shuffle = torch.Generator().manual_seed(t.seed * 7919 + step)
            for _epoch in range(t.epochs):
                for rows in minibatches(len(rollout.texts), t.minibatch_size, shuffle):
                    sub = ResponseBatch.from_rollout(rollout, run.pad_id, rows)
                    m = sub.mask  # [b, Tr]
                    logprobs, entropy = run.shards.run(policy_logprobs, sub, temperature, chunk, True)  # [b, Tr]; through the FSDP root when sharded
                    old = None if one_update else old_lp[rows]
                    losses, lm = ppo_clip_loss(logprobs, old, advantages[rows], m, clip_eps=r.clip_eps)  # [b, Tr]
                    tokens = global_tokens(m)  # the minibatch's response tokens over all processes
                    loss = token_mean_global(losses, m, tokens)  # all processes' tokens: the step equals one process's
                    ensure_finite(loss.detach(), step + 1)
                    piece = {
                        "grad_norm": optimizer_step(loss, params, optimizer, t.max_grad_norm, run.shards),
                        "loss/total": loss.detach(),
                        "policy/entropy": token_mean_global(entropy, m, tokens),  # this process's share, summed over processes
                    }
                    if not one_update:  # else the ratio is 1: both 0 by construction
                        piece["policy/approx_kl"] = token_share(lm["approx_kl"], m, tokens)
                        piece["policy/clip_frac"] = token_share(lm["clipfrac"], m, tokens)
                    means.add(piece)
            metrics = means.means()
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()

        metrics.update(rollout_metrics(rollout, scores, kl, got.gold))  # 5.
        metrics.update(got.extras)
        metrics.update(timer.metrics())
        metrics["kl/coef"] = kl_ctl.value
        metrics.update(group_metrics(scores, advantages, group))
        if state.end_step(step, metrics, len(rollout.texts)):
            break
    return state.finish()


__all__ = ["RLOOConfig", "RLOOSection", "run_rloo"]
