"""GAE, critic-free baselines, whitening, KL estimators and KL controllers."""

import math

import pytest
import torch

from tether.rl.advantages import gae, group_advantages, leave_one_out_advantages, place_terminal_rewards, whiten
from tether.rl.kl import AdaptiveKLController, FixedKLController, KLEstimator, kl_estimate

# --------------------------------------------------------------------------- GAE


def test_gae_three_steps_by_hand():
    """γ = 0.9, λ = 0.8 (γλ = 0.72), r = [0, 0, 1], V = [0.5, 0.6, 0.7], episode ends after step 2:
      δ2 = 1 + 0 − 0.7 = 0.3                    A2 = 0.3
      δ1 = 0 + 0.9·0.7 − 0.6 = 0.03             A1 = 0.03 + 0.72·0.3 = 0.246
      δ0 = 0 + 0.9·0.6 − 0.5 = 0.04             A0 = 0.04 + 0.72·0.246 = 0.21712
      returns = A + V = [0.71712, 0.846, 1.0]
    Row 2 is the same trajectory right-padded to 5 (padding values 9 must not matter);
    row 3 is it left-padded with two prompt positions."""
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 9.0, 9.0], [9.0, 9.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.6, 0.7, 0.0, 0.0], [0.5, 0.6, 0.7, 9.0, 9.0], [9.0, 9.0, 0.5, 0.6, 0.7]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, False, False], [False, False, True, True, True]])
    advantages, returns = gae(rewards, values, gamma=0.9, lam=0.8, mask=mask)
    expected_a = torch.tensor([0.21712, 0.246, 0.3], dtype=torch.float64)
    expected_r = torch.tensor([0.71712, 0.846, 1.0], dtype=torch.float64)
    for row in range(3):
        assert torch.allclose(advantages[row][mask[row]], expected_a, atol=1e-12)
        assert torch.allclose(returns[row][mask[row]], expected_r, atol=1e-12)
        assert (advantages[row][~mask[row]] == 0).all() and (returns[row][~mask[row]] == 0).all()


def reference_gae(rewards, values, mask, dones, bootstrap, gamma, lam):
    """Slow and literal: for each row, list the real steps, then A_t = Σ_l (γλ)^l δ_{t+l},
    stopping after a done; δ uses the next real step's value (or the bootstrap value at the end)."""
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        steps = [t for t in range(T) if mask[b, t]]
        deltas = []
        for i, t in enumerate(steps):
            if dones[b, t]:
                next_v = 0.0
            elif i + 1 < len(steps):
                next_v = float(values[b, steps[i + 1]])
            else:
                next_v = float(bootstrap[b])
            deltas.append(float(rewards[b, t]) + gamma * next_v - float(values[b, t]))
        for i, t in enumerate(steps):
            total, weight = 0.0, 1.0
            for j in range(i, len(steps)):
                total += weight * deltas[j]
                if dones[b, steps[j]]:
                    break
                weight *= gamma * lam
            adv[b][t] = total
    return torch.tensor(adv, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_slow_reference_with_holes_dones_and_bootstrap(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 9
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < 0.75
    dones = torch.rand(B, T, generator=g) < 0.2
    bootstrap = torch.randn(B, generator=g, dtype=torch.float64)
    advantages, returns = gae(rewards, values, gamma=0.97, lam=0.9, mask=mask, dones=dones, bootstrap_value=bootstrap)
    expected = reference_gae(rewards, values, mask, dones, bootstrap, 0.97, 0.9)
    assert torch.allclose(advantages, expected, atol=1e-12)
    assert torch.allclose(returns, torch.where(mask, expected + values, torch.zeros_like(values)), atol=1e-12)
    # The same data time-major ([T, E], as vectorised envs store it) gives the transpose.
    adv_tm, _ = gae(rewards.T, values.T, gamma=0.97, lam=0.9, mask=mask.T, dones=dones.T, bootstrap_value=bootstrap, time_dim=0)
    assert torch.allclose(adv_tm, advantages.T, atol=1e-12)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    """γ = λ = 1, no dones: A_t = Σ_{k ≥ t} r_k − V_t (the values telescope away)."""
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(3, 6, generator=g, dtype=torch.float64)
    values = torch.randn(3, 6, generator=g, dtype=torch.float64)
    advantages, returns = gae(rewards, values, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(-1).cumsum(-1).flip(-1)
    assert torch.allclose(advantages, reward_to_go - values, atol=1e-12)
    assert torch.allclose(returns, reward_to_go, atol=1e-12)


def test_place_terminal_rewards():
    """Scores land on each row's last real token; a row with no tokens gets nothing."""
    mask = torch.tensor([[False, True, True, False], [True, False, False, False], [False, False, False, False]])
    out = place_terminal_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


# --------------------------------------------------------------------------- baselines and whitening


def test_group_advantages_by_hand():
    """Group [1, 2, 3]: mean 2, unbiased std 1 -> [−1, 0, 1]. Group [4, 4, 4]: 0 (no NaN).
    Without std: [−1, 0, 1] and [0, 0, 0] too; group [0, 2, 4]: std 2 -> [−1, 0, 1], mean only -> [−2, 0, 2]."""
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [0.0, 2.0, 4.0]])
    expected = torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]])
    assert torch.allclose(group_advantages(rewards), expected, atol=1e-5)
    assert torch.allclose(group_advantages(rewards.flatten(), group_size=3), expected.flatten(), atol=1e-5)
    centred = group_advantages(rewards, normalize_std=False)
    assert torch.allclose(centred, torch.tensor([[-1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [-2.0, 0.0, 2.0]]))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(3, 1))


def test_leave_one_out_by_hand():
    """[1, 2, 3]: 1 − (2+3)/2 = −1.5, 2 − (1+3)/2 = 0, 3 − (1+2)/2 = 1.5. [0, 4]: −4, 4."""
    assert torch.allclose(leave_one_out_advantages(torch.tensor([[1.0, 2.0, 3.0]])), torch.tensor([[-1.5, 0.0, 1.5]]))
    assert torch.allclose(leave_one_out_advantages(torch.tensor([0.0, 4.0]), group_size=2), torch.tensor([-4.0, 4.0]))


def test_whiten_by_hand():
    """Masked entries [1, 2, 3] (the 100 is masked out): mean 2, unbiased var 1 -> [−1, 0, 1];
    shift_mean=False -> [1, 2, 3]."""
    x = torch.tensor([1.0, 2.0, 3.0, 100.0], dtype=torch.float64)
    m = torch.tensor([True, True, True, False])
    assert torch.allclose(whiten(x, m, eps=0.0), torch.tensor([-1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(whiten(x, m, shift_mean=False, eps=0.0), torch.tensor([1.0, 2.0, 3.0, 0.0], dtype=torch.float64))


# --------------------------------------------------------------------------- KL


def test_kl_estimators_by_hand():
    """lp = −1, ref = −2: k1 = 1, k2 = ½, k3 = (e^{−1} − 1) − (−1) = e^{−1}."""
    lp, ref = torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-2.0], dtype=torch.float64)
    assert kl_estimate("k1", lp, ref).item() == 1.0
    assert kl_estimate(KLEstimator.K2, lp, ref).item() == 0.5
    assert abs(kl_estimate("k3", lp, ref).item() - math.exp(-1)) < 1e-12


def test_k3_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    lp, ref = -5 * torch.rand(1000, generator=g), -5 * torch.rand(1000, generator=g)
    assert (kl_estimate("k3", lp, ref) >= 0).all() and (kl_estimate("k3", lp, lp) == 0).all()


def test_k1_and_k3_estimate_kl_on_samples():
    """p = [0.5, 0.3, 0.2], q = [0.2, 0.3, 0.5]: KL(p‖q) = 0.5·log 2.5 + 0.2·log 0.4 ≈ 0.2749.
    200k samples from p: standard error of the k1 mean ≈ 0.002, so 0.01 is a real check;
    k2 is biased here (½·E[(log p/q)²] ≈ 0.294) and fails the same tolerance."""
    p, q = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, ref = p.log()[samples], q.log()[samples]
    assert abs(kl_estimate("k1", lp, ref).mean().item() - exact) < 0.01
    assert abs(kl_estimate("k3", lp, ref).mean().item() - exact) < 0.01
    assert abs(kl_estimate("k2", lp, ref).mean().item() - exact) > 0.01


def test_adaptive_kl_controller_moves_the_right_way_and_resumes():
    """KL above target raises the coefficient, below lowers it; error clipped to ±0.2:
    KL = 10·target, n_steps = horizon -> coef·1.2; KL = 0 -> coef·0.8; KL = 1.1·target, n/h = 0.5 -> coef·1.05."""
    c = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert abs(c.update(60.0, 1000) - 0.12) < 1e-12
    assert abs(c.update(0.0, 1000) - 0.096) < 1e-12
    assert abs(c.update(6.6, 500) - 0.096 * 1.05) < 1e-12
    resumed = AdaptiveKLController(1.0, target=1.0, horizon=1.0)
    resumed.load_state_dict(c.state_dict())
    assert resumed.update(3.0, 10) == c.update(3.0, 10)
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, 10) == 0.05
    other = FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
