"""PPO on CartPole-v1 (examples/cartpole_ppo.py) through tether's GAE and PPO losses."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gymnasium")

_PATH = Path(__file__).resolve().parents[1] / "examples" / "cartpole_ppo.py"


def _example():
    if "cartpole_ppo" not in sys.modules:
        spec = importlib.util.spec_from_file_location("cartpole_ppo", _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["cartpole_ppo"] = module
        spec.loader.exec_module(module)
    return sys.modules["cartpole_ppo"]


def test_bootstrap_truncated_adds_discounted_value_of_final_obs_only_on_truncation():
    """Three envs: 0 runs on, 1 truncated (time limit), 2 terminated and truncated at once.

    With V(s) = sum(s) and γ = 0.9, env 1's final obs [1, 2, 3, 4] has V = 10, so its reward
    becomes 1 + 0.9·10 = 10; env 2 ended in a terminal state (no bootstrap) and env 0 is live.
    """
    cp = _example()
    reward = torch.ones(3)
    terminated = np.array([False, False, True])
    truncated = np.array([False, True, True])
    final = np.empty(3, dtype=object)
    final[1] = np.array([1.0, 2.0, 3.0, 4.0])
    final[2] = np.array([9.0, 9.0, 9.0, 9.0])
    out = cp.bootstrap_truncated(reward, terminated, truncated, {"final_obs": final}, lambda obs: obs.sum(-1), 0.9)
    assert torch.allclose(out, torch.tensor([1.0, 10.0, 1.0]))
    assert torch.equal(reward, torch.ones(3))  # the input is not modified


def test_truncated_step_gae_equals_one_step_bootstrap():
    """At a truncated step t (done, reward folded with γ·V(s_final)), GAE gives
    A_t = r_t + γ·V(s_final) − V_t: the recursion stops there and nothing of the next episode leaks in."""
    from tether.rl.advantages import gae

    gamma, lam = 0.9, 0.8
    values = torch.tensor([[0.5], [2.0], [3.0]])  # [T=3, E=1]
    v_final = 7.0
    rewards = torch.tensor([[1.0], [1.0 + gamma * v_final], [1.0]])
    dones = torch.tensor([[False], [True], [False]])
    adv, _ = gae(rewards, values, gamma=gamma, lam=lam, dones=dones, bootstrap_value=torch.tensor([4.0]), time_dim=0)
    a2 = 1.0 + gamma * 4.0 - 3.0  # last step, bootstrapped by the rollout cut
    a1 = 1.0 + gamma * v_final - 2.0  # truncated: no flow from step 2
    a0 = (1.0 + gamma * 2.0 - 0.5) + gamma * lam * a1
    assert torch.allclose(adv[:, 0], torch.tensor([a0, a1, a2]), atol=1e-6)


def test_a_few_updates_run_and_log_finite_metrics():
    cp = _example()
    torch.set_num_threads(1)
    out = cp.train_cartpole(seed=0, total_steps=256, num_envs=4, num_steps=16, epochs=2, minibatches=2, eval_episodes=2, log_every=0)
    history = out["history"]
    assert len(history) == 4  # 256 steps / (4 envs × 16 steps)
    for record in history:
        for key in ("approx_kl", "clipfrac", "explained_variance", "entropy", "value_loss", "ratio"):
            assert math.isfinite(record[key]), (key, record)
        # Two actions: entropy lies in (0, ln 2].
        assert 0.0 < record["entropy"] <= math.log(2) + 1e-6
        assert 0.0 <= record["clipfrac"] <= 1.0
    assert out["episodes"] > 0 and math.isfinite(out["avg_return"])
    assert len(out["eval_returns"]) == 2 and all(r >= 1 for r in out["eval_returns"])


@pytest.mark.slow
def test_ppo_solves_cartpole():
    """The greedy policy after training averages at least 475 over 10 evaluation episodes."""
    cp = _example()
    torch.set_num_threads(1)
    out = cp.train_cartpole(seed=1, log_every=0)
    print(f"avg return {out['avg_return']:.1f}, eval {out['eval_returns']}, {out['steps']} steps, {out['seconds']:.1f} s")
    assert out["eval_return"] >= 475, out["eval_returns"]
