"""Rollout collection, the first half of every online step: this step's prompts, replies to
each from the policy, and the reward source's scores. Nothing here knows an algorithm.

    prompts (``load_prompts``, the step's window of ``StepPlan``) -> ``sample_responses``
    (``tether.rollout.engine.generate``) -> ``score`` -> ``Collected``
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.parallel import device, shard, world
from tether.trainers.online.batch import ResponseBatch
from tether.trainers.online.config import PromptDataConfig, SamplingConfig


def load_prompts(cfg: PromptDataConfig) -> tuple[list[list[dict]], list[list[dict]]]:
    """(train prompts, held-out prompts), each a conversation ending in a user turn."""
    from tether.data import load_records

    records = load_records(cfg.path, kind="prompt").records
    prompts = [r.prompt for r in records]
    n_eval = min(cfg.eval_prompts, max(0, len(prompts) - 1))
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.split_seed)).tolist()
    held_out = set(order[:n_eval])
    train = [p for i, p in enumerate(prompts) if i not in held_out]
    return train, [prompts[i] for i in sorted(held_out)]


def prompt_text(prompt: list[dict]) -> str:
    """What a reward source sees as the prompt: the last user message."""
    return prompt[-1]["content"]


def sampling_params(cfg: SamplingConfig):
    from tether.rollout.engine import SamplingParams

    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, stop_at_eos=cfg.stop_at_eos, min_new_tokens=cfg.min_new_tokens
    )


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The sampling generator of one step, on the policy's device: seeded by (seed, step) so a
    resumed run draws the same."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[list[dict]], group_size: int, params, generator: torch.Generator, positions: list[int] | None = None, total_prompts: int = 0):
    """``group_size`` responses to each prompt, group-major (prompt i's are rows i*G .. i*G+G-1).

    ``positions``: where these prompts sit among the step's ``total_prompts`` when the step is
    split across processes; each reply is then sampled as in the whole step's batch."""
    from tether.rollout.engine import encode_prompts, generate

    was_training = model.training
    model.eval()
    ids = encode_prompts(tokenizer, prompts)
    rows = None if positions is None else [p * group_size + j for p in positions for j in range(group_size)]
    # No autocast here: the engine runs in the weights' dtype (float32 master weights during training).
    rollout = generate(model, tokenizer, [p for p in ids for _ in range(group_size)], params, generator, rows=rows, total_rows=total_prompts * group_size)
    model.train(was_training)
    return rollout


def load_reward(spec: str, penalty: float | None = None):
    from tether.rollout.rewards import load_reward_source

    return load_reward_source(spec, penalty=penalty)  # a penalty on a source that is no ensemble is refused there


def score(source, prompts: list[list[dict]], texts: list[str], group_size: int, clip: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Scores [B] of the responses (prompts repeated ``group_size`` times) and the means of any diagnostics."""
    repeated = [prompt_text(p) for p in prompts for _ in range(group_size)]
    out = source.score(repeated, list(texts))
    scores = out["reward"].float().to(device())  # [B], where the policy's log-probs are
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    extras = {f"reward/{k}": float(v.float().mean()) for k, v in out.items() if k != "reward"}
    return scores, extras


@dataclass
class Collected:
    """One step's rollout and its scores: the first half of every online step."""

    prompts: list
    rollout: object  # tether.rollout.Rollout, [B] replies, B = prompts x samples_per_prompt
    scores: torch.Tensor  # [B] proxy reward (clipped to reward.clip)
    extras: dict[str, float]  # what the reward source reports beside the scores
    gold: torch.Tensor | None  # [B] gold judge's scores, when one is configured
    batch: ResponseBatch  # all B replies, for the reference and old-policy passes
    positions: list[int] | None = None  # where these prompts sit in the step's prompts when the step is split across processes
    total_prompts: int = 0  # the step's prompts over all processes


def collect(run, cfg, step: int, timer) -> Collected:
    """This step's prompts, ``samples_per_prompt`` replies to each, and their scores.
    ``run``: the ``RunSetup`` (policy, sources, prompts, plan); ``timer``: the step's ``Timer``."""
    t = cfg.train
    group = t.samples_per_prompt
    indices = run.plan.indices(step)
    # Under torchrun each process takes whole prompts (a group never straddles processes, so group
    # baselines stay local); in a world of one the share is the whole step.
    positions = shard(list(range(len(indices))))
    prompts = [run.train_prompts[indices[i]] for i in positions]
    with timer("generate"):
        run.shards.sync_sampler()  # FSDP: the whole current weights, on every process (a collective)
        generator = step_generator(t.seed, step, device())
        split = world().distributed
        rollout = sample_responses(run.sampler, run.tokenizer, prompts, group, run.params, generator, positions if split else None, len(indices))
    with timer("score"):
        scores, extras = score(run.source, prompts, rollout.texts, group, cfg.reward.clip)  # [B]
        gold = score(run.gold, prompts, rollout.texts, group)[0] if run.gold is not None else None  # [B]
    return Collected(prompts, rollout, scores, extras, gold, ResponseBatch.from_rollout(rollout, run.pad_id), positions if split else None, len(indices))


__all__ = ["Collected", "collect", "load_prompts", "load_reward", "prompt_text", "sample_responses", "sampling_params", "score", "step_generator"]
