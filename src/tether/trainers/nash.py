"""Nash-MD (``tether nash``): Nash learning from pairwise preferences (Munos et al. 2023).

Each step, for a batch of prompts:

    y  ~ π            (the policy, through the rollout engine; scored by reward.source for the logs)
    y′ ~ π_mix        (the token-level geometric mixture π^(1−β)·π_ref^β, ``nash.mixture_coef`` β;
                       ``tether.rollout.mixture``)
    P  = judge(x, y, y′)                         P(y ≻ y′) from any pairwise judge
    loss = Nash-MD policy gradient               ``tether.losses.nash.nash_md_loss``, τ = kl.coef

The judge (``nash.judge``) is any ``tether eval --judge`` spec (``tether.feedback.judges.load_judge``:
a saved pairwise preference model directory from ``tether pm train``, 'vader', a reward model), or
``reward``: the reward source ``reward.source`` compared pairwise (``RewardJudge``: hard verdicts
by default, 1 / 0 / ½, or σ((r − r′)/T) with ``nash.judge_temperature`` T > 0), which is how
VADER judges the sentiment task. Logged each step: ``win/mixture`` (mean P(y ≻ y′)), with
``nash.vs_reference`` also ``win/reference`` (against a fresh reply of the reference), ``kl/ref``
(per reply, ``kl.estimator``), the reward of y, the loss and the times. After training, the
held-out prompts (``data.eval_prompts`` × ``data.eval_samples``) give the policy's win-rate
against the reference (= the starting policy) under the judge (``tether.evaluate.policy``: ties
as halves, a preference model asked in both orders), with a 95% paired-bootstrap interval over
prompts, written to ``summary.json`` as ``held_out/win_rate_vs_reference`` (``_low``/``_high``).

Checkpoints, resume, the time budget and the before/after held-out reward come from the online
trainers' machinery (``tether.trainers.online``). One update per step (the ratio is 1), so
``train.epochs`` must be 1 and ``train.minibatch_size`` 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tether.config import opt
from tether.trainers.online.config import KLConfig, OnlineSections, OnlineTrainConfig


@dataclass
class NashSection:
    judge: str = opt("reward", "Pairwise judge of (y, y'): 'reward' (reward.source compared pairwise) or any `tether eval --judge` spec, e.g. the directory of a saved preference model (tether pm train).")
    judge_temperature: float = opt(0.0, "judge=reward: 0 gives hard verdicts (1 / 0 / 0.5 on a tie); T > 0 gives sigmoid((r - r') / T).")
    mixture_coef: float = opt(0.125, "beta of the geometric mixture pi^(1-beta) * pi_ref^beta that the policy plays against (0: self-play against pi).")
    vs_reference: bool = opt(True, "Also sample a reply from the reference and log the policy's win-rate against it (win/reference).")
    vs_reference_every: int = opt(1, "With vs_reference: every how many steps (the reference's replies cost a fifth of a step; the metric is only logged).")
    eval_bootstrap: int = opt(1000, "Rounds of the paired bootstrap over held-out prompts for the win-rate interval (0: no interval).")


@dataclass
class NashConfig(OnlineSections):
    """Nash-MD: play against the geometric mixture of policy and reference under a pairwise judge."""

    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.05))
    train: OnlineTrainConfig = field(default_factory=lambda: OnlineTrainConfig(output_dir="runs/nash", prompts_per_step=8, samples_per_prompt=1, lr=1e-5))
    nash: NashSection = field(default_factory=NashSection)


def run_nash(cfg: NashConfig, reward_source=None, gold_source=None, judge=None) -> dict:
    """The Nash-MD loop; saves ``<output_dir>/model`` and returns the summary rows. ``judge``
    (a PairJudge) overrides ``nash.judge``."""
    from tether.losses.nash import nash_md_loss
    from tether.rl.kl import kl_estimate
    from tether.rollout.mixture import sample_mixture, sample_reference
    from tether.trainers.common import ensure_finite
    from tether.trainers.judging import finish_with_win_rate, start_judged_run
    from tether.losses.reduce import example_mean
    from tether.parallel import device, gather_rows, sum_metrics, world
    from tether.trainers.online.batch import policy_logprobs
    from tether.trainers.online.rollout import collect, prompt_text, step_generator
    from tether.trainers.online.run import Timer, rollout_metrics
    from tether.trainers.online.update import global_tokens, optimizer_step

    started = time.time()
    t = cfg.train
    if t.epochs != 1 or t.minibatch_size != 0:
        raise ValueError("tether nash takes one update per step: train.epochs must be 1 and train.minibatch_size 0")
    if cfg.nash.vs_reference_every < 1:
        raise ValueError(f"nash.vs_reference_every must be at least 1, got {cfg.nash.vs_reference_every}")
    if cfg.nash.vs_reference_every != 1 and not cfg.nash.vs_reference:
        raise ValueError("nash.vs_reference_every is set but nash.vs_reference is false: no win-rate against the reference is logged")
    if not 0.0 <= cfg.nash.mixture_coef <= 1.0:
        raise ValueError(f"nash.mixture_coef must lie in [0, 1], got {cfg.nash.mixture_coef}")
    judged = start_judged_run(cfg, reward_source, gold_source, judge, cfg.nash.judge, cfg.nash.judge_temperature, "nash.judge", "nash", started)
    run, judge, params, optimizer, scheduler, kl_ctl, state = judged.run, judged.judge, judged.params, judged.optimizer, judged.scheduler, judged.kl_ctl, judged.state
    frozen = run.reference.frozen
    temperature, chunk, group = cfg.sampling.temperature, cfg.model.chunk_size, t.samples_per_prompt
    run.policy.train()
    for step in range(state.start_step, t.max_steps):
        timer = Timer()
        got = collect(run, cfg, step, timer)  # y ~ π, scored by reward.source (logged as reward/*)
        texts = [prompt_text(p) for p in got.prompts for _ in range(group)]
        with timer("generate_mixture"):
            # The sampler: the whole policy (under FSDP refreshed from the shards by collect).
            mix = sample_mixture(run.sampler, run.tokenizer, got.prompts, group, run.params, step_generator(t.seed + 7919, step), cfg.nash.mixture_coef, frozen, positions=got.positions, total_prompts=got.total_prompts)
        with timer("judge"):
            win = judge(texts, got.rollout.texts, mix.texts).float().to(device())  # [B] P(y ≻ y′), beside the log-probs (and gathered from there)
        metrics: dict[str, float] = {}
        if cfg.nash.vs_reference and (step + 1) % cfg.nash.vs_reference_every == 0:
            with timer("generate_reference"):
                ref_rollout = sample_reference(run.sampler, run.tokenizer, got.prompts, group, run.params, step_generator(t.seed + 104729, step), frozen, got.positions, got.total_prompts)
            with timer("judge"):
                metrics["win/reference"] = float(gather_rows(judge(texts, got.rollout.texts, ref_rollout.texts).float().to(device())).mean())
        mask = got.batch.mask  # [B, Tr]
        with timer("reference"):
            ref_lp = run.reference.logprobs(run.sampler, got.batch, temperature, chunk)  # [B, Tr]
        kl = torch.where(mask, kl_estimate(cfg.kl.estimator, got.rollout.logprobs.float(), ref_lp), torch.zeros(()))  # [B, Tr]
        with timer("update"):
            logprobs, entropy = run.shards.run(policy_logprobs, got.batch, temperature, chunk, True)  # [B, Tr]; through the FSDP root when sharded
            losses, lm = nash_md_loss(logprobs, ref_lp, win, mask, kl_coef=kl_ctl.value)  # [B]
            # This process's share of the mean over the whole step's replies (every process's):
            # summed over processes with the gradients, it is the one-process loss.
            loss = example_mean(losses, normaliser=got.total_prompts * group)
            ensure_finite(loss.detach(), step + 1)
            metrics["grad_norm"] = optimizer_step(loss, params, optimizer, t.max_grad_norm, run.shards)
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()
        metrics.update(rollout_metrics(got.rollout, got.scores, kl, got.gold))
        metrics.update(got.extras)
        metrics.update(timer.metrics())
        # Each process's share of the step's means (over every process's replies, and tokens), summed.
        # (The advantage is a mean over this process's replies; every process holds as many.)
        shares = {"loss/total": loss.detach(), "nash/advantage": lm["advantage"] / world().size, "policy/entropy": (entropy * mask).sum() / global_tokens(mask)}
        metrics.update(sum_metrics(shares))
        metrics.update({
            "win/mixture": float(gather_rows(win).mean()),
            "kl/coef": kl_ctl.value,
            "mixture/length": float(gather_rows(mix.response_mask.sum(1).float()).mean()),
        })
        if state.end_step(step, metrics, len(got.rollout.texts)):
            break
    return finish_with_win_rate(state, run, cfg, judge, cfg.nash.eval_bootstrap)


__all__ = ["NashConfig", "NashSection", "run_nash"]
