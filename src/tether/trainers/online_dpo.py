"""Online DPO (``tether online-dpo``, or ``tether dpo --online``): DPO on the policy's own fresh samples.

Each step samples two replies per prompt from the current policy (the rollout engine), labels
each pair with a pairwise judge (``online.labeller``: ``reward`` compares ``reward.source``
pairwise, hard verdicts by default, e.g. VADER or a saved reward model; or a saved preference
model directory), and takes one step of any *paired* DPO-family loss (``dpo.loss``: dpo, cdpo,
robust, ipo, hinge, simpo, orpo, rpo, with ``dpo.beta`` and the variant's own keys) on the
labelled pairs. The reply the judge prefers (P > ½) is the chosen one; a tie (P = ½) teaches
nothing and is dropped (``label/ties`` logs the fraction). Log-probabilities are of the model
itself (temperature 1), as in offline DPO; the reference is the model with its LoRA adapters off
or a frozen copy (``kl.reference``), run only for losses that need one.

Logged: the loss's own metrics (implicit rewards, margin, accuracy), ``label/ties``,
``label/confidence`` (mean |P − ½|·2), with ``online.uncertainty`` also ``label/dropped`` and
``label/weight_mean`` (the ensemble's confidence rule, ``tether.feedback.uncertainty``), ``label/score_gap`` (reward.source of chosen minus
rejected), ``kl/ref`` (per reply, ``kl.estimator``), the reward of the samples. Checkpoints,
resume, the time budget and the before/after held-out reward come from the online trainers'
machinery; the held-out win-rate against the reference is added at the end as for ``tether nash``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tether.config import PreferenceConfig, opt
from tether.trainers.online.config import KLConfig, OnlineSections, OnlineTrainConfig


@dataclass
class OnlineLabelSection:
    labeller: str = opt("reward", "Who labels each sampled pair: 'reward' (reward.source compared pairwise) or any `tether eval --judge` spec, e.g. the directory of a saved preference model (tether pm train).")
    judge_temperature: float = opt(0.0, "labeller=reward: 0 gives hard verdicts (ties dropped); T > 0 gives sigmoid((r - r') / T), the winner still being the side above 1/2.")
    eval_bootstrap: int = opt(1000, "Rounds of the paired bootstrap over held-out prompts for the win-rate interval (0: no interval).")
    uncertainty: str = opt("off", "Uncertainty-aware DPO with a reward-model ensemble as labeller (online.labeller the ensemble's directory, or 'reward' with reward.source one): 'weight' weights each pair by |2·P̄ − 1| (P̄ the members' mean Bradley–Terry probability), 'drop' drops pairs whose mean reward gap is within uncertainty_k spreads of 0, 'off' labels by P̄ alone. See tether.feedback.uncertainty.")
    uncertainty_k: float = opt(1.0, "uncertainty=drop: keep a pair only if |mean gap| > k · std of the members' gaps.")
    uncertainty_temperature: float = opt(1.0, "Temperature T of each member's preference probability sigmoid(gap / T).")


@dataclass
class OnlineDPOConfig(OnlineSections):
    """Online DPO: sample pairs from the policy, label them with a judge, take a DPO-family step."""

    # kl: only kl.reference (which reference) and kl.estimator (the logged kl/ref) apply; beta is dpo.beta.
    kl: KLConfig = field(default_factory=lambda: KLConfig(coef=0.0))
    train: OnlineTrainConfig = field(default_factory=lambda: OnlineTrainConfig(output_dir="runs/online_dpo", prompts_per_step=8, samples_per_prompt=2, lr=5e-6))
    dpo: PreferenceConfig = field(default_factory=PreferenceConfig)
    online: OnlineLabelSection = field(default_factory=OnlineLabelSection)


def _check(cfg: OnlineDPOConfig) -> None:
    from tether.losses.preference import spec_of

    t = cfg.train
    if spec_of(cfg.dpo.loss).data != "paired":
        raise ValueError(f"online DPO takes a paired loss; dpo.loss={cfg.dpo.loss} learns from {spec_of(cfg.dpo.loss).data} data")
    if t.samples_per_prompt != 2:
        raise ValueError(f"online DPO samples a pair per prompt: train.samples_per_prompt must be 2, got {t.samples_per_prompt}")
    if t.epochs != 1 or t.minibatch_size != 0:
        raise ValueError("online DPO takes one update per step: train.epochs must be 1 and train.minibatch_size 0")
    if cfg.kl.coef != 0.0 or cfg.kl.adaptive:
        raise ValueError("kl.coef / kl.adaptive do not apply to online DPO: the pull towards the reference is dpo.beta")
    if cfg.dpo.reference == "cached":
        raise ValueError("dpo.reference=cached does not apply online (fresh samples every step); choose the reference with kl.reference")
    from tether.feedback.uncertainty import RULES

    if cfg.online.uncertainty not in RULES:
        raise ValueError(f"online.uncertainty must be one of {RULES}, got {cfg.online.uncertainty!r}")
    if cfg.dpo.reference != "auto":
        print(f"warning: dpo.reference={cfg.dpo.reference} is ignored online; kl.reference={cfg.kl.reference} chooses the reference")


def label_pairs(win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen [M], rejected [M], kept pair indices [M]) as flat reply indices, for pairs (2i, 2i+1)
    with P(2i ≻ 2i+1) = ``win[i]``; ties (exactly ½) are left out."""
    kept = (win != 0.5).nonzero().squeeze(1)  # [M]
    first_wins = win[kept] > 0.5  # [M]
    chosen = 2 * kept + (~first_wins).long()
    return chosen, 2 * kept + first_wins.long(), kept


def run_online_dpo(cfg: OnlineDPOConfig, reward_source=None, gold_source=None, judge=None) -> dict:
    """The online DPO loop; saves ``<output_dir>/model`` and returns the summary rows. ``judge``
    (a PairJudge) overrides ``online.labeller``."""
    from tether.losses.preference import preference_loss, spec_of
    from tether.losses.reduce import example_mean
    from tether.rl.kl import kl_estimate
    from tether.trainers.common import ensure_finite
    from tether.trainers.dpo import loss_kwargs
    from tether.trainers.judging import finish_with_win_rate, start_judged_run
    from tether.parallel import device, gather_rows, global_sum, sum_metrics
    from tether.trainers.online.batch import policy_logprobs
    from tether.trainers.online.rollout import collect, prompt_text
    from tether.trainers.online.run import Timer, rollout_metrics
    from tether.trainers.online.update import optimizer_step

    started = time.time()
    _check(cfg)
    if cfg.online.uncertainty != "off" and judge is None:
        from tether.feedback.uncertainty import EnsembleJudge

        o = cfg.online
        judge = EnsembleJudge(cfg.reward.source if o.labeller == "reward" else o.labeller, o.uncertainty, o.uncertainty_k, o.uncertainty_temperature)
    t = cfg.train
    spec = spec_of(cfg.dpo.loss)
    # kl_ctl stays at 0 (kl.coef must be 0): only carried for the checkpoint format.
    judged = start_judged_run(cfg, reward_source, gold_source, judge, cfg.online.labeller, cfg.online.judge_temperature, "online.labeller", "online_dpo", started)
    run, judge, params, optimizer, scheduler, state = judged.run, judged.judge, judged.params, judged.optimizer, judged.scheduler, judged.state
    if cfg.online.uncertainty != "off" and not hasattr(judge, "label"):
        raise ValueError(f"online.uncertainty={cfg.online.uncertainty} needs an ensemble labeller (tether.feedback.uncertainty.EnsembleJudge), got {type(judge).__name__}")
    chunk, hparams = cfg.model.chunk_size, loss_kwargs(cfg.dpo)
    run.policy.train()
    for step in range(state.start_step, t.max_steps):
        timer = Timer()
        got = collect(run, cfg, step, timer)  # 2 replies per prompt, rows (2i, 2i+1)
        texts = got.rollout.texts
        with timer("judge"):
            pair_prompts = [prompt_text(p) for p in got.prompts]
            if cfg.online.uncertainty != "off":  # the ensemble's confidence rule: P̄ and a weight per pair
                win, weights = judge.label(pair_prompts, texts[0::2], texts[1::2])  # [N], [N]
                win = torch.where(weights > 0, win.float(), torch.full_like(win.float(), 0.5))  # a dropped pair is left out like a tie
            else:
                win, weights = judge(pair_prompts, texts[0::2], texts[1::2]).float(), None  # [N] P(2i ≻ 2i+1)
        win = win.to(device())  # beside the log-probs it indexes (and gathered from there)
        weights = weights.to(device()) if weights is not None else None
        chosen, rejected, kept = label_pairs(win)
        # The kept pairs of every process: the loss's normaliser, and whether anyone updates (a
        # decision all processes must share: the update holds the gradients' collectives).
        total_kept = int(global_sum(torch.tensor(kept.numel(), device=device())))
        mask = got.batch.mask  # [B, Tr]
        with timer("reference"):
            ref_lp = run.reference.logprobs(run.sampler, got.batch, 1.0, chunk)  # [B, Tr]
        all_win = gather_rows(win)  # [N of every process]
        metrics: dict[str, float] = {"label/ties": 1.0 - total_kept / all_win.numel(), "label/confidence": float((all_win - 0.5).abs().mean() * 2)}
        if weights is not None:
            from tether.feedback.uncertainty import weight_metrics

            metrics.update(weight_metrics(gather_rows(weights)))
        with timer("update"), torch.set_grad_enabled(total_kept > 0):
            logprobs, _ = run.shards.run(policy_logprobs, got.batch, 1.0, chunk)  # [B, Tr]; through the FSDP root when sharded
            seq = (logprobs * mask).sum(1)  # [B]
            ref_seq = (ref_lp * mask).sum(1)  # [B]
            lengths = mask.sum(1).clamp(min=1)  # [B]
            if total_kept:
                # A process whose pairs all tied still takes part: its M is 0 and its loss an empty
                # sum, 0, yet connected through ``seq`` to every weight, so its backward joins the
                # gradients' collectives (DDP's all-reduce, FSDP's reduce-scatter) with zeros.
                losses, lm = preference_loss(
                    cfg.dpo.loss, policy_chosen=seq[chosen], policy_rejected=seq[rejected], chosen_len=lengths[chosen], rejected_len=lengths[rejected],
                    **({"ref_chosen": ref_seq[chosen], "ref_rejected": ref_seq[rejected]} if spec.needs_reference else {}), **hparams,
                )  # [M]
                # This process's share of the mean over every process's kept pairs.
                loss = example_mean(losses, None if weights is None or cfg.online.uncertainty != "weight" else weights[kept], normaliser=total_kept)
                ensure_finite(loss.detach(), step + 1)
                metrics["grad_norm"] = optimizer_step(loss, params, optimizer, t.max_grad_norm, run.shards)
                # The loss's metrics are means over this process's kept pairs: weighted by them.
                # (Every process names the same metrics, a process without pairs with zeros: the sum is one collective.)
                shares = {k: v.detach() * kept.numel() / total_kept if kept.numel() else torch.zeros(()) for k, v in lm.items()}
                shares["label/score_gap"] = (got.scores[chosen] - got.scores[rejected]).sum() / total_kept
                shares["loss/total"] = loss.detach()
                metrics.update(sum_metrics(shares))
            else:  # every pair tied on every process: nothing to learn this step (logged, not hidden)
                state.logger.print(f"step {step + 1}: every pair tied under the labeller; no update")
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()
        kl = torch.where(mask, kl_estimate(cfg.kl.estimator, logprobs.detach(), ref_lp), torch.zeros(()))  # [B, Tr]
        metrics.update(rollout_metrics(got.rollout, got.scores, kl, got.gold))
        metrics.update(got.extras)
        metrics.update(timer.metrics())
        if state.end_step(step, metrics, len(texts)):
            break
    return finish_with_win_rate(state, run, cfg, judge, cfg.online.eval_bootstrap)


__all__ = ["OnlineDPOConfig", "OnlineLabelSection", "label_pairs", "run_online_dpo"]
