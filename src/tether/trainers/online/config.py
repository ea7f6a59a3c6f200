"""Configuration sections of the online RL commands (``tether ppo | grpo | rloo``).

Each algorithm's config (``PPOConfig``, ``GRPOConfig``, ``RLOOConfig``) is ``OnlineSections``
plus its own section; ``train`` shares the training keys of every command (``TrainingBase``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tether.config import (
    LoRAConfig,
    ModelConfig,
    PolicyEvalConfig,
    TrainingBase,
    choices,
    opt,
)
from tether.rl.kl import KLEstimator


@dataclass
class PromptDataConfig:
    path: str = opt("bundled:review_prompts", "Prompts to train on: any file tether reads as prompt records (a 'prompt' field or a conversation ending in a user turn), or bundled:<name>.")
    eval_prompts: int = opt(16, "Prompts held out (a fixed, seeded pick) to measure the reward before and after training; 0 disables.")
    eval_samples: int = opt(2, "Samples per held-out prompt in the before/after evaluation.")
    split_seed: int = opt(1234, "Seed of the held-out pick (kept apart from train.seed so runs with different seeds share held-out prompts).")


@dataclass
class SamplingConfig:
    max_new_tokens: int = opt(48, "Tokens generated per response at most.")
    temperature: float = opt(1.0, "Sampling temperature; training log-probabilities use the same temperature so the importance ratio starts at 1.")
    top_p: float = opt(1.0, "Nucleus sampling threshold (1.0: off). Log-probabilities are of the full distribution, before filtering.")
    top_k: int = opt(0, "Sample from the k most likely tokens only (0: off).")
    stop_at_eos: bool = opt(True, "End a response at its first stop token (eos, <|im_end|>); false: every response is max_new_tokens long.")
    min_new_tokens: int = opt(0, "With stop_at_eos: stop tokens cannot be drawn before this many tokens. Unlike top_k/top_p this changes the policy's distribution: sampling and training log-probabilities (and the reference's) are renormalised over the other tokens at those positions.")


@dataclass
class OnlineTrainConfig(TrainingBase):
    """The ``train`` section of PPO, GRPO and RLOO: the shared training keys (``TrainingBase``) with
    online defaults, and what an online step needs besides."""

    RENAMED = {"steps": "train.max_steps"}  # not a field (no annotation): old keys get a clear error

    # TrainingBase keys whose online default differs from the offline one:
    output_dir: str = opt("runs/online", "Directory for checkpoints, logs, summary.json and the final model.")
    lr: float = opt(1e-5, "Peak learning rate of the policy.")
    min_lr_ratio: float = opt(1.0, "Cosine decay ends at lr * min_lr_ratio (1.0: constant after warm-up).")
    warmup_ratio: float = opt(0.0, "Fraction of the optimizer steps spent warming the learning rate up linearly from zero.")
    save_every: int = opt(25, "Write a checkpoint every N steps (0: only at the end).")
    # Online only:
    max_steps: int = opt(100, "Optimizer rounds: each samples a fresh batch of prompts and responses, then updates on them.")
    prompts_per_step: int = opt(8, "Prompts sampled per step.")
    samples_per_prompt: int = opt(1, "Responses generated per prompt (the group size of GRPO and RLOO, at least 2 there).")
    epochs: int = opt(1, "Passes over each step's responses (PPO epochs).")
    minibatch_size: int = opt(0, "Responses per gradient update inside an epoch (0: the whole step's batch in one update).")
    monitor_window: int = opt(10, "Steps each reward-hacking monitor looks back over.")


@dataclass
class RewardConfig:
    source: str = opt("vader", "Reward to maximise: 'vader' (sentiment of the reply), 'module:function', or a saved reward model / ensemble directory.")
    uncertainty_penalty: float | None = opt(None, "Ensembles: reward = mean - penalty * spread across members (None: the ensemble's own setting).")
    gold: str | None = opt(None, "A second reward used only for monitoring (e.g. 'vader' when training on a reward model); enables the proxy-vs-gold monitor.")
    clip: float | None = opt(None, "Clip scores to [-clip, clip] before use (None: no clipping).")


KLEstimatorName = choices(KLEstimator)


@dataclass
class KLConfig:
    coef: float = opt(0.05, "Initial coefficient beta of the KL penalty to the reference policy: in the reward (PPO, RLOO) or in the per-token loss (GRPO, where it replaces grpo.beta). 0 (and not adaptive): no reference is built or run, and the KL to it is not logged.")
    estimator: KLEstimatorName = opt("k1", "Per-token KL estimate: k1 = lp - ref, k2 = (lp - ref)^2 / 2, k3 = exp(ref - lp) - 1 - (ref - lp).")
    adaptive: bool = opt(False, "Steer beta towards kl.target with a proportional controller (Ziegler et al. 2019); off: beta stays fixed.")
    target: float = opt(6.0, "Adaptive controller: target KL per response (summed over tokens), in nats.")
    horizon: float = opt(10000.0, "Adaptive controller: responses over which beta may change by a factor of about e^0.2.")
    reference: Literal["auto", "copy", "adapter"] = opt("auto", "Reference policy: the base model with LoRA adapters off, or a frozen copy. auto: adapter with LoRA, copy otherwise (online samples are new every step, so nothing is cached; see tether.trainers.reference.resolve_mode).")


def group_train_defaults(output_dir: str):
    """The ``train`` defaults of the group-sampling algorithms (GRPO, RLOO): 4 prompts x 4 replies,
    one update per step."""
    return lambda: OnlineTrainConfig(output_dir=output_dir, epochs=1, minibatch_size=0, prompts_per_step=4, samples_per_prompt=4, lr=1e-5)


def default_lora() -> LoRAConfig:
    return LoRAConfig(enabled=True, r=16, alpha=32)


@dataclass
class OnlineSections:
    """The sections every online trainer's config holds (each trainer adds its own)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=default_lora)
    data: PromptDataConfig = field(default_factory=PromptDataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    policy_eval: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)


__all__ = ["KLConfig", "OnlineSections", "OnlineTrainConfig", "PromptDataConfig", "RewardConfig", "SamplingConfig", "default_lora", "group_train_defaults"]
