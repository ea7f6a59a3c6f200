"""PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022): ``tether ppo``.

One step:

1. sample ``prompts_per_step × samples_per_prompt`` responses from the policy;
2. score each with the reward source (one number per response);
3. with no gradient: the old log-probs and values (one backbone pass: the value head reads the
   policy's own hidden states, or a separate critic's), and the reference log-probs;
4. per-token rewards r_t = −β·KL_t plus the score at the last response token
   (``tether.rl.advantages.kl_penalized_rewards``); GAE → advantages and λ-returns; whitening;
5. ``epochs`` passes over shuffled minibatches: clipped surrogate + vf_coef · clipped value loss
   − entropy_coef · entropy, averaged over the minibatch's tokens; stop the step's updates early
   once a minibatch's approx-KL to the sampling policy exceeds ``ppo.target_kl``;
6. the KL controller moves β towards its target (if adaptive).

The value head is a linear map from the last hidden state to a scalar, zero-initialised so the
first advantages are the rewards themselves. It is saved beside the model as
``value_head.safetensors``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from enum import Enum

import torch
from torch import nn

from tether.config import choices, opt
from tether.trainers.online.config import OnlineSections, OnlineTrainConfig

VALUE_HEAD_FILE = "value_head.safetensors"


class Critic(str, Enum):
    HEAD = "head"  # a value head on the policy's own hidden states
    SEPARATE = "separate"  # a second model with its own LoRA and head


CriticName = choices(Critic)


@dataclass
class PPOSection:
    gamma: float = opt(1.0, "Discount per token in GAE (1.0: the score at the end counts fully for every token).")
    lam: float = opt(0.95, "GAE lambda: 1 = Monte-Carlo returns (high variance), 0 = one-step TD (biased by the value).")
    clip_eps: float = opt(0.2, "Clip range of the importance ratio in the surrogate loss.")
    value_clip: float | None = opt(0.2, "Clip range of the value update around the rollout-time values (None: plain squared error).")
    vf_coef: float = opt(0.1, "Weight of the value loss.")
    entropy_coef: float = opt(0.0, "Weight of the entropy bonus (sample estimate; the logged entropy is exact).")
    whiten_advantages: bool = opt(True, "Standardise the advantages over the step's tokens.")
    target_kl: float | None = opt(None, "Stop the step's remaining updates once a minibatch's approx-KL to the sampling policy exceeds this (None: never).")
    critic: CriticName = opt("head", "head: a value head on the policy's hidden states (shared backbone); separate: a second model (same init, its own LoRA) with its own head.")
    value_lr: float | None = opt(None, "Learning rate of the value head / critic (None: train.lr).")


@dataclass
class PPOConfig(OnlineSections):
    """PPO with a value function against a reward source, KL-penalised towards the reference."""

    train: OnlineTrainConfig = field(default_factory=lambda: OnlineTrainConfig(output_dir="runs/ppo", epochs=2, minibatch_size=8, lr=1e-5))
    ppo: PPOSection = field(default_factory=PPOSection)


class ValueHead(nn.Module):
    """Hidden state [*, H] -> value [*]."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)  # V ≡ 0 at the start: the first advantages are the rewards
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


class PPOModules(nn.Module):
    """Everything PPO trains, in one module so checkpoints and the optimizer see it whole."""

    def __init__(self, policy: nn.Module, value_head: ValueHead, critic: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head
        self.critic = critic

    def value_parameters(self) -> list[nn.Parameter]:
        params = list(self.value_head.parameters())
        if self.critic is not None:
            params += [p for p in self.critic.parameters() if p.requires_grad]
        return params

    def forward(self, batch, temperature: float, chunk_size: int, entropy: bool = False):
        """-> log-probs [B, Tr], values [B, Tr] (0 off the mask), entropy [B, Tr] or None."""
        from tether.trainers.online.batch import response_hidden, response_logprobs

        hidden = response_hidden(self.policy, batch)  # [B, Tr, H]
        logprobs, ent = response_logprobs(self.policy, hidden, batch, temperature, chunk_size, entropy)  # [B, Tr]
        critic_hidden = hidden if self.critic is None else response_hidden(self.critic, batch)  # [B, Tr, H]
        values = self.value_head(critic_hidden)  # [B, Tr]
        values = torch.where(batch.mask.to(values.device), values, torch.zeros((), dtype=values.dtype))
        return logprobs, values, ent


def ppo_forward(modules: PPOModules, batch, temperature: float, chunk_size: int, entropy: bool = False):
    """``modules(batch, ...)``: the function the FSDP root runs whole (``PolicyShards.run``)."""
    return modules(batch, temperature, chunk_size, entropy)


def hidden_size(model) -> int:
    from tether.models import unwrap_peft

    config = unwrap_peft(model).config
    return (config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size


def save_value_head(head: ValueHead, directory: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(directory / VALUE_HEAD_FILE))


def load_value_head(directory: str | Path) -> ValueHead:
    """The value head saved beside a PPO model."""
    from safetensors.torch import load_file

    state = load_file(str(Path(directory) / VALUE_HEAD_FILE))
    head = ValueHead(state["linear.weight"].shape[1])
    head.load_state_dict(state)
    return head


def token_figures(entropy: torch.Tensor, values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The step's entropy, value mean and explained variance over every process's response tokens.
    The masked tokens are gathered (a few thousand floats), so the figures are those of one process
    holding the whole batch: a mean of per-process means would weigh a process's tokens by how many
    its neighbours hold, and a variance does not average at all."""
    from tether.losses.value import explained_variance
    from tether.parallel import gather_rows

    tokens = gather_rows(torch.stack([entropy, values, returns], dim=-1)[mask.bool()])  # [M over processes, 3]
    ent, val, ret = tokens.double().unbind(-1)  # [M] each
    every = torch.ones_like(val, dtype=torch.bool)
    return {"policy/entropy": float(ent.mean()) if len(ent) else 0.0, "value/explained_variance": float(explained_variance(val, ret, every)), "value/mean": float(val.mean()) if len(val) else 0.0}


def run_ppo(cfg: PPOConfig, reward_source=None, gold_source=None) -> dict:
    """Train with PPO; saves ``<output_dir>/model`` (+ value head) and returns the summary rows.

    ``reward_source`` / ``gold_source`` (objects with ``score(prompts, responses)``) replace
    ``reward.source`` / ``reward.gold`` when given (Python callers, tests).
    """
    from tether.losses.policy import ppo_clip_loss
    from tether.losses.reduce import token_mean_global
    from tether.losses.value import clipped_value_loss
    from tether.models import save_model
    from tether.rl.advantages import gae, kl_penalized_rewards, whiten
    from tether.trainers.common import build_optimizer, build_scheduler, ensure_finite, trainable_parameters
    from tether.trainers.online.batch import ResponseBatch, entropy_surrogate
    from tether.trainers.online.rollout import collect
    from tether.trainers.online.run import StepState, Timer, make_kl_controller, rollout_metrics, start_run
    from tether.parallel import barrier, device, global_sum, is_main, sum_metrics
    from tether.trainers.online.update import UpdateMeans, global_tokens, minibatches, optimizer_step, single_update, token_share

    started = time.time()
    t, p = cfg.train, cfg.ppo

    def with_value(policy) -> PPOModules:  # what PPO trains, built before FSDP shards it as one root
        critic = None
        if p.critic == Critic.SEPARATE:
            from tether.trainers.common import load_trainable_model

            critic, _ = load_trainable_model(cfg.model, cfg.lora, t.seed + 1)
        return PPOModules(policy, ValueHead(hidden_size(policy)).to(device()), critic)

    run = start_run(cfg, reward_source, gold_source, wrap=with_value)
    modules = run.shards.trained  # PPOModules (its weights sharded under FSDP)
    policy_params = [q for q in run.policy.parameters() if q.requires_grad]
    optimizer = build_optimizer([{"params": policy_params}, {"params": modules.value_parameters(), "lr": p.value_lr or t.lr}], t)
    scheduler = build_scheduler(optimizer, t.max_steps, t)
    kl_ctl = make_kl_controller(cfg.kl)
    state = StepState(run, cfg, modules, optimizer, scheduler, kl_ctl, "ppo", started)
    params = [q for q in trainable_parameters(modules).values()]
    temperature, chunk = cfg.sampling.temperature, cfg.model.chunk_size
    # One update on the sampling policy: approx-KL and clip fraction are 0 by construction, so unlogged.
    ratio_metrics = not single_update(t, t.prompts_per_step * t.samples_per_prompt)
    modules.train()
    for step in range(state.start_step, t.max_steps):
        timer = Timer()
        got = collect(run, cfg, step, timer)
        rollout, scores, batch = got.rollout, got.scores, got.batch
        mask = batch.mask  # [B, Tr]
        with timer("reference+value"), torch.no_grad():
            ref_lp = run.reference.logprobs(run.sampler, batch, temperature, chunk) if run.reference is not None else None  # [B, Tr]; the whole policy under FSDP too
            old_lp, old_values, entropy = run.shards.run(ppo_forward, batch, temperature, chunk, True)  # [B, Tr] each
        # Without a reference β is 0: the policy's own log-probs stand in, a zero KL leaves the rewards as the scores.
        rewards, kl = kl_penalized_rewards(scores, old_lp, old_lp if ref_lp is None else ref_lp, mask, kl_coef=kl_ctl.value, estimator=cfg.kl.estimator)  # [B, Tr]
        advantages, returns = gae(rewards, old_values, gamma=p.gamma, lam=p.lam, mask=mask)  # [B, Tr]
        if p.whiten_advantages:
            advantages = whiten(advantages, mask, sum_over=global_sum)  # mean and variance over every process's tokens

        with timer("update"):
            means = UpdateMeans()
            early_stop = False
            shuffle = torch.Generator().manual_seed(t.seed * 7919 + step)
            for _epoch in range(t.epochs):
                for rows in minibatches(len(rollout.texts), t.minibatch_size, shuffle):
                    sub = ResponseBatch.from_rollout(rollout, run.pad_id, rows)
                    m = sub.mask  # [b, Tr]
                    logprobs, values, _ = run.shards.run(ppo_forward, sub, temperature, chunk)  # [b, Tr]; through the FSDP root when sharded
                    pg_losses, pg_metrics = ppo_clip_loss(logprobs, old_lp[rows], advantages[rows], m, clip_eps=p.clip_eps)  # [b, Tr]
                    v_losses, v_metrics = clipped_value_loss(values, old_values[rows], returns[rows], m, clip_eps=p.value_clip)  # [b, Tr]
                    per_token = pg_losses + p.vf_coef * v_losses  # [b, Tr]
                    if p.entropy_coef:
                        per_token = per_token - p.entropy_coef * entropy_surrogate(logprobs)
                    tokens = global_tokens(m)  # the minibatch's response tokens over all processes
                    loss = token_mean_global(per_token, m, tokens)
                    ensure_finite(loss.detach(), step + 1)
                    # Token means as this process's shares of the means over every process's tokens (summed in UpdateMeans).
                    piece = {
                        "grad_norm": optimizer_step(loss, params, optimizer, t.max_grad_norm, run.shards),
                        "loss/total": loss.detach(),
                        "loss/policy": token_mean_global(pg_losses.detach(), m, tokens),
                        "loss/value": token_mean_global(v_losses.detach(), m, tokens),
                        "policy/approx_kl": token_share(pg_metrics["approx_kl"], m, tokens),
                        "policy/clip_frac": token_share(pg_metrics["clipfrac"], m, tokens),
                        "value/clip_frac": token_share(v_metrics["value/clipfrac"], m, tokens),
                    }
                    means.add({k: v for k, v in piece.items() if ratio_metrics or k not in ("policy/approx_kl", "policy/clip_frac")})
                    # Every process must take the same decision: the approx-KL over every process's tokens.
                    if p.target_kl is not None and sum_metrics({"a": piece["policy/approx_kl"]})["a"] > p.target_kl:
                        early_stop = True
                        break
                if early_stop:
                    break
            metrics = means.means()
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            scheduler.step()

        metrics.update(rollout_metrics(rollout, scores, kl if ref_lp is not None else None, got.gold))
        metrics.update(got.extras)
        metrics.update(timer.metrics())
        metrics.update(token_figures(entropy, old_values, returns, mask))
        metrics.update({"kl/coef": kl_ctl.value, "updates": float(means.updates), "early_stopped": float(early_stop)})
        if state.end_step(step, metrics, len(rollout.texts)):
            break

    rows = state.finish()
    whole = run.shards.whole()  # under FSDP a collective: the gathered PPOModules on the main process
    if whole is not None and is_main():
        out = Path(t.output_dir)
        if whole.critic is None:
            save_value_head(whole.value_head, out / "model")
        else:
            save_model(whole.critic, run.tokenizer, out / "critic")
            save_value_head(whole.value_head, out / "critic")
    barrier()
    return rows


__all__ = ["PPOConfig", "PPOModules", "PPOSection", "VALUE_HEAD_FILE", "ValueHead", "load_value_head", "run_ppo"]
