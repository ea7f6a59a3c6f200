"""Held-out evaluation of a policy against a reward: sample, score, and measure the KL paid.

``mean_reward`` is what the online trainers run before and after training on prompts they never
train on, so "the reward went up" is measured on fresh prompts and fresh samples, not read off
the training curve.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def mean_reward(
    model,
    tokenizer,
    prompts: list,
    source,
    params,
    samples: int = 1,
    *,
    seed: int = 0,
    batch_size: int = 16,
    gold=None,
    reference_logprobs: Callable | None = None,
) -> dict[str, float]:
    """Mean and std of ``source``'s reward over ``samples`` responses to each prompt.

    ``prompts``: strings (one user turn) or conversations; ``params`` a ``SamplingParams``;
    ``gold``: a second reward source scored on the same responses (``gold_mean``);
    ``reference_logprobs(rollout) -> [B, Tr]``: adds ``kl``, the mean over responses of
    Σ_t (log π(y_t) − log π_ref(y_t)) (k1 summed per response: an unbiased estimate of the
    sequence-level KL(π ‖ π_ref) under the sampling temperature). Sampling is seeded, so two
    models evaluated with the same seed see the same random numbers.
    """
    from tether.rollout.engine import encode_prompts, generate

    was_training = model.training
    model.eval()
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    ids = encode_prompts(tokenizer, prompts)
    rows = [(i, t) for i in range(len(prompts)) for t in range(samples)]
    rewards, golds, lengths, kls = [], [], [], []
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)  # the engine samples on the model's device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        rollout = generate(model, tokenizer, [ids[i] for i, _ in chunk], params, generator)
        chunk_prompts = [texts[i] for i, _ in chunk]
        rewards.append(source.score(chunk_prompts, rollout.texts)["reward"].float())  # [b]
        if gold is not None:
            golds.append(gold.score(chunk_prompts, rollout.texts)["reward"].float())  # [b]
        lengths.append(rollout.response_mask.sum(1).float())  # [b]
        if reference_logprobs is not None:
            ref = reference_logprobs(rollout)  # [b, Tr]
            kls.append(torch.where(rollout.response_mask, rollout.logprobs - ref, torch.zeros(())).sum(1))  # [b]
    model.train(was_training)
    reward = torch.cat(rewards)
    out = {"reward_mean": float(reward.mean()), "reward_std": float(reward.std()) if reward.numel() > 1 else 0.0, "length": float(torch.cat(lengths).mean()), "n": float(reward.numel())}
    if golds:
        out["gold_mean"] = float(torch.cat(golds).mean())
    if kls:
        out["kl"] = float(torch.cat(kls).mean())
    return out


__all__ = ["mean_reward"]
