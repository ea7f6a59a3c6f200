"""Held-out evaluation of a policy against a reward: sample, score, and measure the KL paid.

``mean_reward`` is what the online trainers run before and after training on prompts they never
train on, so "the reward went up" is measured on fresh prompts and fresh samples, not read off
the training curve. ``sample_and_score`` is the loop under it, keeping every response: ``tether
eval`` (``tether.evaluate.policy``) builds its win-rates and samples file from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class ScoredSamples:
    """``samples`` responses to each prompt, prompt-major: row r answers prompt ``prompt_index[r]``."""

    prompt_index: list[int]  # [N]
    texts: list[str]  # [N] decoded responses
    response_ids: list[list[int]]  # [N] generated token ids (including the stop token)
    lengths: torch.Tensor  # [N] float, generated tokens per response
    rewards: dict[str, torch.Tensor] = field(default_factory=dict)  # source name -> [N]
    kl: torch.Tensor | None = None  # [N] Σ_t log π − log π_ref per response, when a reference was given


@torch.no_grad()
def sample_and_score(
    model,
    tokenizer,
    prompts: list,
    sources: Mapping[str, object],
    params,
    samples: int = 1,
    *,
    seed: int = 0,
    batch_size: int = 16,
    reference_logprobs: Callable | None = None,
) -> ScoredSamples:
    """Sample ``samples`` responses per prompt (seeded), score each with every source of ``sources``.

    ``prompts``: strings (one user turn) or conversations; reward sources see the last user message.
    ``reference_logprobs(rollout) -> [B, Tr]``: adds ``kl`` per response, Σ_t (log π(y_t) − log π_ref(y_t))
    with log π the engine's log-probs under the sampling temperature (k1 summed per response: an
    unbiased estimate of the sequence-level KL(π ‖ π_ref) at that temperature).
    """
    from tether.rollout.engine import encode_prompts, generate

    was_training = model.training
    model.eval()
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    ids = encode_prompts(tokenizer, prompts)
    rows = [(i, t) for i in range(len(prompts)) for t in range(samples)]
    out = ScoredSamples(prompt_index=[i for i, _ in rows], texts=[], response_ids=[], lengths=torch.zeros(0))
    rewards: dict[str, list[torch.Tensor]] = {name: [] for name in sources}
    lengths, kls = [], []
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)  # the engine samples on the model's device
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            rollout = generate(model, tokenizer, [ids[i] for i, _ in chunk], params, generator)
            chunk_prompts = [texts[i] for i, _ in chunk]
            for name, source in sources.items():
                rewards[name].append(source.score(chunk_prompts, rollout.texts)["reward"].float())  # [b]
            n_tokens = rollout.response_mask.sum(1)  # [b]
            lengths.append(n_tokens.float())
            out.texts += rollout.texts
            out.response_ids += [r[:n] for r, n in zip(rollout.response_ids.tolist(), n_tokens.tolist())]
            if reference_logprobs is not None:
                ref = reference_logprobs(rollout)  # [b, Tr]
                kls.append(torch.where(rollout.response_mask, rollout.logprobs - ref, torch.zeros(())).sum(1))  # [b]
    finally:
        model.train(was_training)
    out.lengths = torch.cat(lengths) if lengths else torch.zeros(0)
    out.rewards = {name: torch.cat(values) if values else torch.zeros(0) for name, values in rewards.items()}
    out.kl = torch.cat(kls) if kls else None
    return out


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
    Σ_t (log π(y_t) − log π_ref(y_t)) (see ``sample_and_score``). Sampling is seeded, so two
    models evaluated with the same seed see the same random numbers.
    """
    sources = {"reward": source} if gold is None else {"reward": source, "gold": gold}
    scored = sample_and_score(model, tokenizer, prompts, sources, params, samples, seed=seed, batch_size=batch_size, reference_logprobs=reference_logprobs)
    reward = scored.rewards["reward"]
    out = {"reward_mean": float(reward.mean()), "reward_std": float(reward.std()) if reward.numel() > 1 else 0.0, "length": float(scored.lengths.mean()), "n": float(reward.numel())}
    if gold is not None:
        out["gold_mean"] = float(scored.rewards["gold"].mean())
    if scored.kl is not None:
        out["kl"] = float(scored.kl.mean())
    return out


__all__ = ["ScoredSamples", "mean_reward", "sample_and_score"]
