"""PPO on CartPole-v1 with tether's own RL math: the same code that trains language models.

The loss and advantage functions used here are the ones the text trainers use, with a
different "sequence" axis:

* ``tether.rl.advantages.gae`` on time-major [T, E] rewards/values with ``dones`` and a
  ``bootstrap_value`` for the rollout cut;
* ``tether.rl.advantages.whiten`` for per-minibatch advantage normalisation;
* ``tether.losses.policy.ppo_clip_loss`` / ``entropy_from_logits`` / ``entropy_bonus`` and
  ``tether.losses.value.clipped_value_loss`` / ``explained_variance`` on flat [N] samples
  (a 1-D tensor plays the role of [B, T] with an all-true mask).

Termination vs truncation: CartPole ends an episode either because the pole fell
(``terminated``: the next state is terminal, its value is 0) or because 500 steps passed
(``truncated``: the next state is an ordinary state the time limit hid). Both are marked
``done`` for GAE, and for a truncation γ·V(final observation) is folded into that step's
reward, as ``gae``'s docstring prescribes. Hence the vector env runs in SAME_STEP autoreset
mode: the final observation comes back in ``info["final_obs"]`` while the returned
observation already starts the next episode, so every stored step is a real one.

Run: ``python examples/cartpole_ppo.py --seed 1`` (about 20 s of one CPU core).
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from tether.losses.policy import entropy_bonus, entropy_from_logits, ppo_clip_loss
from tether.losses.value import clipped_value_loss, explained_variance
from tether.rl.advantages import gae, whiten


@dataclass
class CartPoleConfig:
    seed: int = 1
    total_steps: int = 20_480  # environment steps summed over all envs (seeds 1-5 all solve it by then)
    num_envs: int = 8
    num_steps: int = 64  # steps per env per rollout; batch = num_envs * num_steps
    epochs: int = 10  # passes over each rollout batch
    minibatches: int = 4
    lr: float = 2.5e-3
    anneal_lr: bool = True  # linear decay to 0: late updates stop disturbing a solved policy
    gamma: float = 0.99
    lam: float = 0.9
    clip_eps: float = 0.2
    value_clip_eps: float | None = None  # None: plain ½(V − R)²; returns up to ~100 make a 0.2 clip too tight
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    eval_episodes: int = 10
    log_every: int = 10  # updates between log lines; 0 silences logging


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the policy logits and the value (shared layers make the value
    loss scale fight the policy gradient on such small nets)."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: int = 64):
        super().__init__()

        def mlp(out: int, out_gain: float) -> nn.Sequential:
            layers = [nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out)]
            for layer in layers:
                if isinstance(layer, nn.Linear):
                    # Orthogonal init, small last layer: the initial policy is near uniform and
                    # the initial value near 0 (Andrychowicz et al. 2021).
                    gain = out_gain if layer is layers[-1] else 2**0.5
                    nn.init.orthogonal_(layer.weight, gain)
                    nn.init.zeros_(layer.bias)
            return nn.Sequential(*layers)

        self.actor = mlp(num_actions, 0.01)
        self.critic = mlp(1, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(obs), self.critic(obs).squeeze(-1)  # [*, A], [*]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)  # [*]


def _logprob_of(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [*]


@torch.no_grad()
def bootstrap_truncated(reward: torch.Tensor, terminated, truncated, info: dict, value_fn, gamma: float) -> torch.Tensor:
    """Rewards [E] with γ·V(final observation) added where the time limit cut a live episode.

    GAE treats every ``done`` as the end of the recursion; for a truncation the state the limit
    hid still had value, so it enters through the reward instead (``tether.rl.advantages.gae``).
    A step both terminated and truncated is terminal: no bootstrap.
    """
    import numpy as np

    cut = np.flatnonzero(np.asarray(truncated) & ~np.asarray(terminated))
    if cut.size == 0:
        return reward
    final = torch.as_tensor(np.stack(info["final_obs"][cut]), dtype=torch.float32)  # [C, D]
    reward = reward.clone()
    reward[torch.as_tensor(cut)] += gamma * value_fn(final)  # [C]
    return reward


@torch.no_grad()
def evaluate(agent: ActorCritic, episodes: int = 10, seed: int = 10_000) -> list[float]:
    """Returns of the greedy (argmax) policy, one fresh seeded episode each."""
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            logits = agent.actor(torch.as_tensor(obs, dtype=torch.float32))  # [A]
            obs, reward, terminated, truncated, _ = env.step(int(logits.argmax()))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def train_cartpole(config: CartPoleConfig | None = None, **overrides) -> dict:
    """Train PPO on CartPole-v1; returns the final figures and the per-update log.

    Keys: ``avg_return`` (mean of the last 20 finished training episodes), ``eval_return``
    (mean greedy return over ``eval_episodes``), ``eval_returns``, ``episodes``, ``steps``,
    ``seconds``, ``history`` (one metrics dict per update), ``agent``.
    """
    import gymnasium as gym
    import numpy as np

    cfg = CartPoleConfig(**{**asdict(config or CartPoleConfig()), **overrides})
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.make("CartPole-v1") for _ in range(cfg.num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )
    envs.action_space.seed(cfg.seed)
    agent = ActorCritic(envs.single_observation_space.shape[0], int(envs.single_action_space.n), cfg.hidden)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)

    T, E = cfg.num_steps, cfg.num_envs
    batch = T * E
    minibatch = batch // cfg.minibatches
    num_updates = max(1, cfg.total_steps // batch)
    obs_dim = envs.single_observation_space.shape[0]
    obs_buf = torch.zeros(T, E, obs_dim)  # [T, E, D]
    actions = torch.zeros(T, E, dtype=torch.long)  # [T, E]
    logprobs = torch.zeros(T, E)  # [T, E]
    values = torch.zeros(T, E)  # [T, E]
    rewards = torch.zeros(T, E)  # [T, E]
    dones = torch.zeros(T, E, dtype=torch.bool)  # [T, E]

    obs_np, _ = envs.reset(seed=cfg.seed)
    obs = torch.as_tensor(obs_np, dtype=torch.float32)  # [E, D]
    running_return = np.zeros(E)
    finished: deque[float] = deque(maxlen=20)
    episodes = 0
    history = []

    for update in range(num_updates):
        if cfg.anneal_lr:
            optimizer.param_groups[0]["lr"] = cfg.lr * (1.0 - update / num_updates)

        # ---- rollout: T steps in E envs with the current policy ----
        for t in range(T):
            with torch.no_grad():
                logits, value = agent(obs)  # [E, A], [E]
                action = torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)  # [E]
            next_obs, raw_reward, terminated, truncated, info = envs.step(action.numpy())
            running_return += raw_reward
            reward = torch.as_tensor(raw_reward, dtype=torch.float32)  # [E]
            reward = bootstrap_truncated(reward, terminated, truncated, info, agent.value, cfg.gamma)  # [E]
            obs_buf[t], actions[t], values[t], rewards[t] = obs, action, value, reward
            logprobs[t] = _logprob_of(logits, action)
            dones[t] = torch.as_tensor(terminated | truncated)
            for i in np.flatnonzero(terminated | truncated):
                finished.append(float(running_return[i]))
                running_return[i] = 0.0
                episodes += 1
            obs = torch.as_tensor(next_obs, dtype=torch.float32)

        # ---- advantages: GAE over time-major [T, E], bootstrapped where the rollout was cut ----
        with torch.no_grad():
            bootstrap = agent.value(obs)  # [E]
        advantages, returns = gae(rewards, values, gamma=cfg.gamma, lam=cfg.lam, dones=dones, bootstrap_value=bootstrap, time_dim=0)  # [T, E]

        flat_obs = obs_buf.reshape(batch, obs_dim)  # [N, D]
        flat = {k: v.reshape(batch) for k, v in dict(actions=actions, logprobs=logprobs, values=values, advantages=advantages, returns=returns).items()}
        every = torch.ones(minibatch, dtype=torch.bool)  # [M] all samples are real

        # ---- update: epochs × minibatches of the clipped surrogate ----
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(batch)
            for lo in range(0, batch - minibatch + 1, minibatch):
                idx = order[lo : lo + minibatch]  # [M]
                logits, new_values = agent(flat_obs[idx])  # [M, A], [M]
                new_logprobs = _logprob_of(logits, flat["actions"][idx])  # [M]
                adv = whiten(flat["advantages"][idx], every)  # [M]
                pg, pg_metrics = ppo_clip_loss(new_logprobs, flat["logprobs"][idx], adv, every, clip_eps=cfg.clip_eps)  # [M]
                vl, _ = clipped_value_loss(new_values, flat["values"][idx], flat["returns"][idx], every, clip_eps=cfg.value_clip_eps)  # [M]
                ent, e_metrics = entropy_bonus(entropy_from_logits(logits), every, coef=cfg.ent_coef)  # [M]
                loss = (pg + cfg.vf_coef * vl + ent).mean()  # every sample is real: a plain mean
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                optimizer.step()
                for name, metric in {**pg_metrics, "value_loss": vl.mean().detach(), **e_metrics}.items():
                    sums[name] = sums.get(name, 0.0) + float(metric)
                count += 1

        record = {name: total / count for name, total in sums.items()}
        record.update(
            update=update + 1,
            steps=(update + 1) * batch,
            explained_variance=float(explained_variance(flat["values"], flat["returns"], torch.ones(batch, dtype=torch.bool))),
            avg_return=float(np.mean(finished)) if finished else float("nan"),
            episodes=episodes,
        )
        history.append(record)
        if cfg.log_every and ((update + 1) % cfg.log_every == 0 or update + 1 == num_updates):
            print(
                f"update {record['update']:4d} steps {record['steps']:7d} return {record['avg_return']:6.1f} "
                f"approx_kl {record['approx_kl']:.4f} clipfrac {record['clipfrac']:.3f} "
                f"ev {record['explained_variance']:.3f} entropy {record['entropy']:.3f}",
                flush=True,
            )
    envs.close()
    eval_returns = evaluate(agent, cfg.eval_episodes, seed=cfg.seed + 10_000)
    return {
        "avg_return": history[-1]["avg_return"],
        "eval_return": float(np.mean(eval_returns)),
        "eval_returns": eval_returns,
        "episodes": episodes,
        "steps": num_updates * batch,
        "seconds": time.perf_counter() - start,
        "history": history,
        "agent": agent,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = CartPoleConfig()
    for f in fields(CartPoleConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif f.name == "value_clip_eps":
            parser.add_argument(flag, type=float, default=default, help="omit for an unclipped value loss")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny nets: 1 is fastest)")
    args = vars(parser.parse_args(argv))
    torch.set_num_threads(args.pop("threads"))
    result = train_cartpole(CartPoleConfig(**args))
    print(
        f"final: avg return (last 20 episodes) {result['avg_return']:.1f}, greedy eval {result['eval_return']:.1f} "
        f"over {len(result['eval_returns'])} episodes, {result['steps']} steps in {result['seconds']:.1f} s"
    )
    return result


if __name__ == "__main__":
    main()
