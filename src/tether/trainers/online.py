"""Pieces every online RL loop (PPO, GRPO, RLOO) shares: configuration sections, prompt data,
sampling, scoring, reference and policy log-probabilities over responses, and logging.

A step of any of these algorithms reads the same way:

    prompts -> generate (G samples each) -> score -> reference log-probs -> advantages -> update

and only the advantages and the loss differ. Those stay in each algorithm's own loop
(``tether.trainers.ppo``, ``tether.trainers.critic_free``); what is here has no algorithm in it.
The start and end of a run and the bookkeeping around each step live in ``tether.trainers.online_run``.

Response tensors are laid out like a ``Rollout``: [B, Tr], row b is response b, column t its
t-th generated token, ``mask`` True on generated tokens (including the eos that ended it).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from tether.config import LoRAConfig, ModelConfig, opt
from tether.trainers.reference import Reference as SharedReference

# ---------------------------------------------------------------------------------------------
# Configuration sections
# ---------------------------------------------------------------------------------------------


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
class OnlineTrainConfig:
    output_dir: str = opt("runs/online", "Directory for checkpoints, logs, summary.json and the final model.")
    steps: int = opt(100, "Optimizer rounds: each samples a fresh batch of prompts and responses, then updates on them.")
    prompts_per_step: int = opt(8, "Prompts sampled per step.")
    samples_per_prompt: int = opt(1, "Responses generated per prompt (the group size of GRPO and RLOO, at least 2 there).")
    epochs: int = opt(1, "Passes over each step's responses (PPO epochs).")
    minibatch_size: int = opt(0, "Responses per gradient update inside an epoch (0: the whole step's batch in one update).")
    lr: float = opt(1e-5, "Peak learning rate of the policy.")
    min_lr_ratio: float = opt(1.0, "Cosine decay ends at lr * min_lr_ratio (1.0: constant after warm-up).")
    warmup_ratio: float = opt(0.0, "Fraction of the optimizer updates spent warming the learning rate up linearly.")
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and norms).")
    adam_betas: list[float] = opt([0.9, 0.999], "AdamW betas.")
    max_grad_norm: float = opt(1.0, "Clip the global gradient norm to this value (0 disables).")
    seed: int = opt(0, "Seed for prompt order, sampling and new heads.")
    save_every: int = opt(25, "Write a checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = opt(2, "How many recent checkpoints to keep.")
    resume: bool = opt(False, "Continue from the latest checkpoint in output_dir.")
    threads: int | None = opt(None, "torch CPU threads (default: torch's choice).")
    progress: bool = opt(True, "Show a progress bar.")
    monitor_window: int = opt(10, "Steps each reward-hacking monitor looks back over.")
    max_minutes: float | None = opt(None, "Stop after the step that crosses this many minutes of training (a CPU budget); the model is saved and evaluated as usual.")


@dataclass
class RewardConfig:
    source: str = opt("vader", "Reward to maximise: 'vader' (sentiment of the reply), 'module:function', or a saved reward model / ensemble directory.")
    uncertainty_penalty: float | None = opt(None, "Ensembles: reward = mean - penalty * spread across members (None: the ensemble's own setting).")
    gold: str | None = opt(None, "A second reward used only for monitoring (e.g. 'vader' when training on a reward model); enables the proxy-vs-gold monitor.")
    clip: float | None = opt(None, "Clip scores to [-clip, clip] before use (None: no clipping).")


@dataclass
class KLConfig:
    coef: float = opt(0.05, "Initial coefficient beta of the KL penalty to the reference policy. 0 (and not adaptive): no reference is built or run, and the KL to it is not logged.")
    estimator: Literal["k1", "k2", "k3"] = opt("k1", "Per-token KL estimate: k1 = lp - ref, k2 = (lp - ref)^2 / 2, k3 = exp(ref - lp) - 1 - (ref - lp).")
    adaptive: bool = opt(False, "Steer beta towards kl.target with a proportional controller (Ziegler et al. 2019); off: beta stays fixed.")
    target: float = opt(6.0, "Adaptive controller: target KL per response (summed over tokens), in nats.")
    horizon: float = opt(10000.0, "Adaptive controller: responses over which beta may change by a factor of about e^0.2.")
    reference: Literal["auto", "copy", "adapter"] = opt("auto", "Reference policy: the base model with LoRA adapters off, or a frozen copy. auto: adapter with LoRA, copy otherwise (online samples are new every step, so nothing is cached; see tether.trainers.reference.resolve_mode).")


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


# ---------------------------------------------------------------------------------------------
# Prompts, sampling, scoring
# ---------------------------------------------------------------------------------------------


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


def step_generator(seed: int, step: int) -> torch.Generator:
    """The sampling generator of one step: seeded by (seed, step) so a resumed run draws the same."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@torch.no_grad()
def sample_responses(model, tokenizer, prompts: list[list[dict]], group_size: int, params, generator: torch.Generator):
    """``group_size`` responses to each prompt, group-major (prompt i's are rows i*G .. i*G+G-1)."""
    from tether.rollout.engine import encode_prompts, generate

    was_training = model.training
    model.eval()
    ids = encode_prompts(tokenizer, prompts)
    rollout = generate(model, tokenizer, [p for p in ids for _ in range(group_size)], params, generator)
    model.train(was_training)
    return rollout


def load_reward(spec: str, penalty: float | None = None):
    from tether.rollout.rewards import load_reward_source

    return load_reward_source(spec, penalty=penalty)  # a penalty on a source that is no ensemble is refused there


def score(source, prompts: list[list[dict]], texts: list[str], group_size: int, clip: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Scores [B] of the responses (prompts repeated ``group_size`` times) and the means of any diagnostics."""
    repeated = [prompt_text(p) for p in prompts for _ in range(group_size)]
    out = source.score(repeated, list(texts))
    scores = out["reward"].float()  # [B]
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    extras = {f"reward/{k}": float(v.float().mean()) for k, v in out.items() if k != "reward"}
    return scores, extras


# ---------------------------------------------------------------------------------------------
# Log-probabilities and hidden states of responses
# ---------------------------------------------------------------------------------------------


@dataclass
class ResponseBatch:
    """Prompt + response tokens laid out for a forward pass, and where each response token sits.

    ``positions[b, t]`` is the flat index (row * T + column) of the hidden state that predicts
    response token t of response b: the policy's log-prob of that token and the value of the state
    before it both read it. By default responses to the same prompt (a GRPO/RLOO group, or PPO's
    samples of one prompt) share it: the prompt runs once and the responses branch off it under a
    4-D attention mask (``tether.data.shared_prefix``), exactly as separate rows would compute it.
    ``share_prompt=False`` gives one right-padded row per response.
    """

    input_ids: torch.Tensor  # [R, T] long
    attention_mask: torch.Tensor  # [R, T] long (padded) or [R, 1, T, T] additive float (shared prompt)
    position_ids: torch.Tensor  # [R, T] long
    positions: torch.Tensor  # [B, Tr] long, flat index of the hidden state that predicts response token t
    response_ids: torch.Tensor  # [B, Tr] long
    mask: torch.Tensor  # [B, Tr] bool
    # min_new_tokens: tokens the engine excluded at response columns < banned_until (see Rollout)
    banned_ids: tuple[int, ...] = ()
    banned_until: int = 0

    @classmethod
    def from_rollout(cls, rollout, pad_id: int, rows: torch.Tensor | None = None, share_prompt: bool = True) -> ResponseBatch:
        from tether.data.layouts import Layout, collate_layout

        rows = torch.arange(rollout.response_ids.shape[0]) if rows is None else rows
        sequences = rollout.sequences()
        chosen = [sequences[i] for i in rows.tolist()]  # (prompt + response ids, prompt_len) per response
        # Responses with identical prompt tokens form one example; its slots are laid out example-major.
        groups: dict[tuple[int, ...], list[int]] = {}
        for b, (ids, plen) in enumerate(chosen):
            groups.setdefault(tuple(ids[:plen]) if share_prompt else (b,), []).append(b)
        order = [b for members in groups.values() for b in members]  # sequence number -> response
        layout = Layout.SHARED_PROMPT if share_prompt else Layout.PADDED
        batch = collate_layout(layout, [[chosen[b] for b in members] for members in groups.values()], pad_id)
        # Each sequence's loss positions, in column order, are the states predicting its tokens 0, 1, ...
        owner = batch.sequence_ids.masked_fill(~batch.loss_mask, -1).reshape(-1)  # [R*T], -1 where no response token is predicted
        flat = (owner >= 0).nonzero().squeeze(1)  # [M]
        flat = flat[torch.argsort(owner[flat], stable=True)]  # [M], grouped by sequence, each in column order
        counts = torch.bincount(owner[owner >= 0], minlength=len(chosen)).tolist()
        response_ids, mask = rollout.response_ids[rows], rollout.response_mask[rows]  # [B, Tr]
        positions = torch.zeros(response_ids.shape, dtype=torch.long)  # [B, Tr]; 0 off the mask (never read)
        start = 0
        for seq, b in enumerate(order):
            positions[b, : counts[seq]] = flat[start : start + counts[seq]]
            start += counts[seq]
        return cls(
            batch.input_ids, batch.attention_mask, batch.position_ids, positions, response_ids, mask.bool(),
            banned_ids=getattr(rollout, "banned_ids", ()), banned_until=getattr(rollout, "banned_until", 0),
        )


def response_hidden(model, batch: ResponseBatch) -> torch.Tensor:
    """Backbone hidden states at the response positions -> [B, Tr, H]."""
    from tether.models import forward_hidden

    hidden = forward_hidden(model, batch.input_ids, batch.position_ids, batch.attention_mask)  # [R, T, H]
    return hidden.reshape(-1, hidden.shape[-1])[batch.positions.to(hidden.device)]  # [B, Tr, H]


def response_logprobs(model, hidden: torch.Tensor, batch: ResponseBatch, temperature: float, chunk_size: int, entropy: bool = False):
    """Log-probs [B, Tr] of the response tokens (0 off the mask) from ``response_hidden``; with
    ``entropy`` also the exact per-token entropy [B, Tr], detached.

    ``tether.rl.token_logprobs`` walks the vocabulary in chunks, so no [B, Tr, V] float logits
    are held. Its entropy comes without a gradient; an entropy *bonus* therefore uses the sample
    estimate −log π(y_t) (see ``entropy_surrogate``).

    Where the batch carries a ``min_new_tokens`` ban, the log-probs there are of the renormalised
    distribution the engine sampled from (see ``banned_renormaliser``); the entropy stays that of
    the full distribution (a metric only).
    """
    from tether.models import backbone_and_head
    from tether.rl.logprobs import token_logprobs

    _, head = backbone_and_head(model)
    mask = batch.mask.to(hidden.device)
    targets = batch.response_ids.to(hidden.device)[mask]  # [M]
    out = token_logprobs(hidden[mask], head.weight, targets, bias=head.bias, temperature=temperature, chunk_size=chunk_size, return_entropy=entropy)
    logprobs, ent = out if entropy else (out, None)  # [M]
    positions = mask.nonzero(as_tuple=True)
    if batch.banned_ids and batch.banned_until > 0:
        early = positions[1] < batch.banned_until  # [M] tokens drawn while the ban held
        if bool(early.any()):
            log_kept = banned_renormaliser(hidden[mask][early], head, targets[early], logprobs[early], batch.banned_ids, temperature)  # [m]
            logprobs = logprobs - torch.zeros_like(logprobs).index_put((early.nonzero(as_tuple=True)[0],), log_kept.to(logprobs.dtype))

    def scatter(values):  # [M] -> [B, Tr], differentiable
        return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).index_put(positions, values)

    return scatter(logprobs), (scatter(ent) if entropy else None)


def banned_renormaliser(hidden: torch.Tensor, head, targets: torch.Tensor, logprobs: torch.Tensor, banned_ids, temperature: float) -> torch.Tensor:
    """log(1 − Σ_e π(e)) over the banned tokens e, per row: what renormalising over the others
    subtracts from log π(y). hidden [m, H], targets [m] (never banned), logprobs [m] = log π(y) -> [m].

    No second pass over the vocabulary: the normaliser cancels in a difference of logits,
        log π(e) = log π(y) + (z_e − z_y) / T,
    so only the banned tokens' and the targets' logits are computed. Differentiable.
    """
    ids = torch.as_tensor(banned_ids, device=hidden.device)  # [k]
    h = hidden.float()  # [m, H]
    banned_logits = h @ head.weight[ids].float().T  # [m, k]
    target_logits = (h * head.weight[targets].float()).sum(-1)  # [m]
    if head.bias is not None:
        banned_logits = banned_logits + head.bias[ids].float()
        target_logits = target_logits + head.bias[targets].float()
    log_banned = (logprobs.float()[:, None] + (banned_logits - target_logits[:, None]) / temperature).logsumexp(-1)  # [m] log Σ_e π(e), < 0
    return log1mexp(log_banned)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def entropy_surrogate(logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token term whose gradient, for tokens sampled from π, is an unbiased estimate of ∇H.

        ∇H = −Σ_y ∇π(y)·(log π(y) + 1) = −E_y[log π(y)·∇log π(y)]    (E[∇log π] = 0)

    so  −sg(log π(y))·log π(y)  has the right gradient; its value equals the sample estimate of H.
    """
    return -logprobs.detach() * logprobs


class Reference(SharedReference):
    """Per-token reference log-probabilities of sampled responses; the policy (mode, copy or
    adapters off, and what ``auto`` means) is ``tether.trainers.reference.Reference``'s."""

    def __init__(self, mode: str, model, lora_enabled: bool):
        super().__init__(mode, model, lora_enabled, fresh_samples=True)

    @torch.no_grad()
    def logprobs(self, model, batch: ResponseBatch, temperature: float, chunk_size: int) -> torch.Tensor:
        with self.network(model) as net:
            lp, _ = response_logprobs(net, response_hidden(net, batch), batch, temperature, chunk_size)  # [B, Tr]
        return lp


def uses_reference(cfg: KLConfig) -> bool:
    """Whether the KL penalty can ever be nonzero. A fixed β = 0 never needs the reference, so none
    is built (no frozen copy) or run (no reference forward pass), and the KL to it goes unlogged."""
    return cfg.adaptive or cfg.coef != 0.0


def make_kl_controller(cfg: KLConfig):
    from tether.rl.kl import AdaptiveKLController, FixedKLController

    return AdaptiveKLController(cfg.coef, cfg.target, cfg.horizon) if cfg.adaptive else FixedKLController(cfg.coef)


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


# ---------------------------------------------------------------------------------------------
# Timing, logging, monitors
# ---------------------------------------------------------------------------------------------


class Timer:
    """Seconds per phase of a step: ``with timer("generate"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.seconds.items()}


def rollout_metrics(rollout, scores: torch.Tensor, kl: torch.Tensor | None, gold: torch.Tensor | None) -> dict[str, float]:
    """What practitioners watch about the samples themselves. ``kl`` [B, Tr] is None when the run
    has no reference (β = 0): ``kl/ref`` is then left out rather than logged as a made-up 0."""
    lengths = rollout.response_mask.sum(1).float()  # [B]
    out = {
        "reward/mean": float(scores.mean()),
        "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
        "response/length": float(lengths.mean()),
        "response/finished": float(rollout.finished.float().mean()),
    }
    if kl is not None:
        out["kl/ref"] = float(kl.sum(1).mean())  # per response, summed over its tokens
    if gold is not None:
        out["gold/mean"] = float(gold.mean())
    return out



def build_scheduler(optimizer, total_updates: int, cfg: OnlineTrainConfig):
    from tether.trainers.common import warmup_cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_updates, cfg.warmup_ratio, cfg.min_lr_ratio))


def build_optimizer(param_groups: list[dict], cfg: OnlineTrainConfig) -> torch.optim.AdamW:
    """AdamW over groups of (name, parameter) lists; 1-D tensors get no weight decay."""
    groups = []
    for group in param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        lr = group.get("lr", cfg.lr)
        groups.append({"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr})
        groups.append({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr})
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=tuple(cfg.adam_betas), fused=True)


def evaluate_held_out(model, tokenizer, prompts, source, gold, params, samples: int, seed: int, reference: Reference | None, temperature: float, chunk_size: int) -> dict[str, float]:
    """Mean reward (and gold reward, and KL to the reference) on held-out prompts."""
    from tether.evaluate.online import mean_reward
    from tether.rollout.engine import pad_token_id

    def ref_fn(rollout):
        return reference.logprobs(model, ResponseBatch.from_rollout(rollout, pad_token_id(tokenizer)), temperature, chunk_size)

    return mean_reward(model, tokenizer, prompts, source, params, samples, seed=seed, gold=gold, reference_logprobs=ref_fn if reference is not None else None)


__all__ = [
    "KLConfig",
    "OnlineSections",
    "OnlineTrainConfig",
    "PromptDataConfig",
    "Reference",
    "ResponseBatch",
    "RewardConfig",
    "SamplingConfig",
    "Timer",
    "entropy_surrogate",
    "evaluate_held_out",
    "load_prompts",
    "load_reward",
    "make_kl_controller",
    "minibatches",
    "response_hidden",
    "response_logprobs",
    "rollout_metrics",
    "sample_responses",
    "score",
    "single_update",
    "step_generator",
    "uses_reference",
]
