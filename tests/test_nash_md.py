"""Nash-MD math (tether.losses.nash): the geometric mixture, the policy-gradient surrogate, and
rock–paper–scissors, where Nash-MD finds the mixed equilibrium and a scalar reward cannot."""

import pytest
import torch

from tether.losses.nash import geometric_mixture_logprobs, nash_md_loss
from tether.losses.reward import bradley_terry_loss

torch.set_num_threads(1)

# PREF[i, j] = P(i beats j) over rock 0, paper 1, scissors 2: paper beats rock, scissors beats
# paper, rock beats scissors. Intransitive: no scalar score orders them.
PREF = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])


def test_geometric_mixture_hand_values():
    """π = (1/2, 1/4, 1/4), π_ref = (1/4, 1/4, 1/2), β = 1/2: π_mix ∝ sqrt(π·π_ref) =
    (sqrt(1/8), 1/4, sqrt(1/8)), normalised: (0.369398, 0.261204, 0.369398). β = 0 gives π, β = 1 π_ref."""
    pol, ref = torch.tensor([0.5, 0.25, 0.25]).log(), torch.tensor([0.25, 0.25, 0.5]).log() + 7.0  # ref unnormalised
    torch.testing.assert_close(geometric_mixture_logprobs(pol, ref, 0.5).exp(), torch.tensor([0.369398, 0.261204, 0.369398]), atol=1e-6, rtol=0)
    torch.testing.assert_close(geometric_mixture_logprobs(pol, ref, 0.0).exp(), pol.exp())
    torch.testing.assert_close(geometric_mixture_logprobs(pol, ref, 1.0).exp(), torch.tensor([0.25, 0.25, 0.5]))
    # temperature T: the mixture of softmax(z/T) distributions, i.e. softmax(mixed z / T)
    torch.testing.assert_close(geometric_mixture_logprobs(pol, ref, 0.5, 2.0).exp(), torch.softmax((0.5 * pol + 0.5 * ref) / 2, -1))
    with pytest.raises(ValueError, match="mixture_coef"):
        geometric_mixture_logprobs(pol, ref, 1.5)


def test_nash_md_loss_hand_values_and_gradient():
    """Two responses: lp = [[−1, −2], [−0.5, 0 (masked)]], ref = [[−1.5, −2], [−1, −9]], P = [0.9, 0.2], τ = 0.1.
    log-ratios: 0.5 and 0.5; advantages 0.9 − 0.5 − 0.05 = 0.35 and 0.2 − 0.5 − 0.05 = −0.35;
    losses = −0.35·(−3) = 1.05 and 0.35·(−0.5) = −0.175. The gradient with respect to each log-prob
    is −advantage on the mask and 0 off it."""
    lp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0], [-1.0, -9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    losses, metrics = nash_md_loss(lp, ref, torch.tensor([0.9, 0.2]), mask, kl_coef=0.1)
    torch.testing.assert_close(losses, torch.tensor([1.05, -0.175]))
    assert float(metrics["kl"]) == pytest.approx(0.5) and float(metrics["win_rate"]) == pytest.approx(0.55)
    losses.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.35, -0.35], [0.35, 0.0]]))


def _expected_step(theta, ref_logits, pref, *, mixture_coef, kl_coef):
    """The Nash-MD surrogate in expectation over y ~ π and y′ ~ π_mix for one-token responses:
    every (y, y′) pair weighted by π(y)·π_mix(y′) (no sampling noise)."""
    logp = torch.log_softmax(theta, -1)  # [3]
    mix = geometric_mixture_logprobs(theta.detach(), ref_logits, mixture_coef).exp()  # [3]
    y, y2 = torch.arange(3).repeat_interleave(3), torch.arange(3).repeat(3)  # all 9 ordered pairs
    losses, _ = nash_md_loss(logp[y][:, None], torch.log_softmax(ref_logits, -1)[y][:, None], pref[y, y2], torch.ones(9, 1, dtype=torch.bool), kl_coef=kl_coef)
    return (logp.detach().exp()[y] * mix[y2] * losses).sum()


def _train(pref, theta0, steps=1500, lr=0.5, mixture_coef=0.05, kl_coef=0.02):
    """Nash-MD policy-gradient steps on a tabular softmax policy; the reference is the start."""
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.SGD([theta], lr=lr)
    path = []
    for _ in range(steps):
        opt.zero_grad()
        _expected_step(theta, theta0, pref, mixture_coef=mixture_coef, kl_coef=kl_coef).backward()
        opt.step()
        path.append(torch.softmax(theta.detach(), -1))
    return torch.stack(path)  # [steps, 3]


def test_rock_paper_scissors_nash_md_reaches_the_mixed_equilibrium():
    """From a skewed start π_0 = softmax(1, 0, −1) = (0.665, 0.245, 0.090), which is also the
    reference, 1500 Nash-MD steps (β = 0.05, τ = 0.02, lr 0.5) bring every response within 0.05 of
    1/3, and keep it there over the last 300 steps (settled, not passing through on a cycle).
    (With τ = 0.02 the KL-regularised equilibrium itself is not exactly uniform: its fixed point
    π ∝ π_ref·exp(P(·≻π)/τ) is about (0.33, 0.36, 0.31).)"""
    theta0 = torch.tensor([1.0, 0.0, -1.0])
    path = _train(PREF, theta0)
    assert (path[0] - 1 / 3).abs().max() > 0.25  # it started far from the equilibrium
    assert (path[-1] - 1 / 3).abs().max() < 0.05, path[-1]
    assert (path[-300:] - 1 / 3).abs().max() < 0.06


def test_rock_paper_scissors_a_fitted_scalar_reward_carries_no_signal():
    """Fit a Bradley–Terry score to the same preferences (each response beats one and loses to
    one, each match observed once each way round as a win): the maximum-likelihood scores are all
    equal, so σ(r_y − r_y′) = 1/2 for every pair. A scalar reward then ranks no response above
    another: every policy is a best response to it (and the reward-maximiser's argmax is any single
    response); the same Nash-MD-style update driven by that reward moves nothing: the policy stays
    at its skewed start, nowhere near 1/3. What moved it in the test above is the intransitive
    preference itself."""
    winners, losers = torch.tensor([1, 2, 0]), torch.tensor([0, 1, 2])  # paper>rock, scissors>paper, rock>scissors
    scores = torch.tensor([0.7, -0.3, 0.1], requires_grad=True)
    opt = torch.optim.SGD([scores], lr=0.5)
    for _ in range(500):
        opt.zero_grad()
        bradley_terry_loss(scores[winners], scores[losers])[0].mean().backward()
        opt.step()
    spread = float(scores.detach().max() - scores.detach().min())
    assert spread < 1e-4, scores  # all equal: the fitted reward is indifferent
    bt_pref = torch.sigmoid(scores.detach()[:, None] - scores.detach()[None, :])  # [3, 3], all 1/2
    torch.testing.assert_close(bt_pref, torch.full((3, 3), 0.5), atol=1e-4, rtol=0)
    theta0 = torch.tensor([1.0, 0.0, -1.0])
    path = _train(bt_pref, theta0, steps=300)
    torch.testing.assert_close(path[-1], torch.softmax(theta0, -1), atol=1e-3, rtol=0)
    assert (path[-1] - 1 / 3).abs().max() > 0.25
