"""PPO clipped surrogate, GRPO, entropy bonus and the clipped value loss."""

import math

import torch

from tether.losses.policy import entropy_bonus, entropy_from_logits, grpo_loss, ppo_clip_loss
from tether.losses.value import clipped_value_loss, explained_variance

EPS = 0.2


def test_ppo_clip_by_hand():
    """ε = 0.2, five tokens (ratio, A):
      (1.5, +1): −min(1.5, 1.2) = −1.2   clipped (no gradient)
      (0.5, +1): −min(0.5, 0.8) = −0.5   unclipped
      (1.5, −1): −min(−1.5, −1.2) = 1.5  unclipped
      (0.5, −1): −min(−0.5, −0.8) = 0.8  clipped
      (1.0, +3): masked out -> 0
    clipfrac = 2/4; ratio mean = 1; approx_kl = mean((r − 1) − log r) over the 4 real tokens
    = (2·(0.5 − log 1.5) + 2·(−0.5 − log 0.5)) / 4."""
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.0]], dtype=torch.float64)
    old = torch.full_like(ratios, -2.0)
    logprobs = (old + ratios.log()).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, True, False]])
    losses, metrics = ppo_clip_loss(logprobs, old, advantages, mask, clip_eps=EPS)
    assert torch.allclose(losses, torch.tensor([[-1.2, -0.5, 1.5, 0.8, 0.0]], dtype=torch.float64), atol=1e-12)
    assert metrics["clipfrac"].item() == 0.5 and abs(metrics["ratio"].item() - 1.0) < 1e-12
    approx_kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5))) / 4
    assert abs(metrics["approx_kl"].item() - approx_kl) < 1e-12
    # d(−ratio·A)/d lp = −ratio·A where unclipped, 0 where clipped or masked.
    losses.sum().backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, -0.5, 1.5, 0.0, 0.0]], dtype=torch.float64))


def test_ppo_dual_clip_and_asymmetric_clip_by_hand():
    """Dual clip c = 3: ratio 4, A = −1: plain loss −min(−4, −1.2) = 4, bounded by −c·A = 3.
    ratio 2, A = −1: plain 2 < 3, untouched. A > 0 is never dual-clipped.
    clip_eps_high = 0.3: ratio 1.5, A = +1: −min(1.5, 1.3) = −1.3."""
    old = torch.zeros(1, 3, dtype=torch.float64)
    logprobs = torch.tensor([[4.0, 2.0, 4.0]], dtype=torch.float64).log()
    advantages = torch.tensor([[-1.0, -1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    losses, metrics = ppo_clip_loss(logprobs, old, advantages, mask, clip_eps=EPS, dual_clip=3.0)
    assert torch.allclose(losses, torch.tensor([[3.0, 2.0, -1.2]], dtype=torch.float64))
    assert abs(metrics["dual_clipfrac"].item() - 1 / 3) < 1e-12
    high, _ = ppo_clip_loss(torch.tensor([[math.log(1.5)]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool), clip_eps=EPS, clip_eps_high=0.3)
    assert abs(high.item() + 1.3) < 1e-6


def test_ppo_gradcheck_sequence_advantages_and_property():
    g = torch.Generator().manual_seed(0)
    old = -3 * torch.rand(3, 5, generator=g, dtype=torch.float64)
    # Ratios inside (0.9, 1.1), away from the clip kinks at 0.8 and 1.2.
    logprobs = old + 0.2 * (torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.5)
    advantages = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)  # [B], one per sequence
    mask = torch.rand(3, 5, generator=g) < 0.8
    f = lambda lp: ppo_clip_loss(lp, old, advantages, mask, clip_eps=EPS, dual_clip=3.0)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (logprobs.clone().requires_grad_(),))
    raised = logprobs.clone()
    raised[0] += 0.01  # sequence 0 has A > 0
    assert (f(raised)[0][mask[0]] < f(logprobs)[0][mask[0]]).all()


def test_grpo_by_hand():
    """old = None (ratio ≡ 1), A = 0.5, lp = −1, ref = −1.5, β = 0.1:
    surrogate −1·0.5 = −0.5; k3 = (e^{−0.5} − 1) − (−0.5) = e^{−0.5} − 0.5;
    loss = −0.5 + 0.1·(e^{−0.5} − 0.5). Gradient w.r.t. lp: −A·ratio + β·(1 − e^{ref − lp}) = −0.5 + 0.1·(1 − e^{−0.5})."""
    lp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-1.5]], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    losses, metrics = grpo_loss(lp, None, ref, torch.tensor([0.5], dtype=torch.float64), mask, beta=0.1)
    k3 = math.exp(-0.5) - 0.5
    assert abs(losses.item() - (-0.5 + 0.1 * k3)) < 1e-12 and abs(metrics["kl"].item() - k3) < 1e-12
    losses.sum().backward()
    assert abs(lp.grad.item() - (-0.5 + 0.1 * (1 - math.exp(-0.5)))) < 1e-12


def test_grpo_gradcheck_and_property():
    g = torch.Generator().manual_seed(1)
    old = -3 * torch.rand(2, 4, generator=g, dtype=torch.float64)
    ref = -3 * torch.rand(2, 4, generator=g, dtype=torch.float64)
    logprobs = old + 0.1 * (torch.rand(2, 4, generator=g, dtype=torch.float64) - 0.5)
    advantages = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    f = lambda lp: grpo_loss(lp, old, ref, advantages, mask, beta=0.0)[0]  # noqa: E731
    f_kl = lambda lp: grpo_loss(lp, old, ref, advantages, mask, beta=0.05)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f_kl, (logprobs.clone().requires_grad_(),))
    assert (f(logprobs + 0.01)[0] < f(logprobs)[0]).all()


def test_entropy_by_hand():
    """Uniform logits over 4 tokens: H = log 4; one-hot-ish logits: H ≈ 0. Bonus = −coef·H, 0 off the mask."""
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    h = entropy_from_logits(logits)
    assert abs(h[0, 0].item() - math.log(4)) < 1e-6 and h[0, 1].item() < 1e-6
    losses, metrics = entropy_bonus(h, torch.tensor([[True, False]]), coef=0.1)
    assert abs(losses[0, 0].item() + 0.1 * math.log(4)) < 1e-6 and losses[0, 1].item() == 0.0
    assert abs(metrics["entropy"].item() - math.log(4)) < 1e-6


def test_clipped_value_loss_by_hand():
    """ε = 0.2, R = 2, V_old = 1:
      V = 1.5: V_clip = 1.2; ½·max(0.25, 0.64) = 0.32 (clipped branch)
      V = 1.1: V_clip = 1.1; ½·0.81 = 0.405
      V = 3.0 masked out -> 0.
    Without clipping: ½·(V − R)² = [0.125, 0.405]."""
    values = torch.tensor([[1.5, 1.1, 3.0]], dtype=torch.float64, requires_grad=True)
    old, returns = torch.ones(1, 3, dtype=torch.float64), torch.full((1, 3), 2.0, dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    losses, metrics = clipped_value_loss(values, old, returns, mask, clip_eps=EPS)
    assert torch.allclose(losses, torch.tensor([[0.32, 0.405, 0.0]], dtype=torch.float64))
    assert metrics["value/clipfrac"].item() == 0.5
    plain, _ = clipped_value_loss(values, old, returns, mask, clip_eps=None)
    assert torch.allclose(plain, torch.tensor([[0.125, 0.405, 0.0]], dtype=torch.float64))
    # The clipped token gets no gradient; the other gets V − R = −0.9.
    losses.sum().backward()
    assert torch.allclose(values.grad, torch.tensor([[0.0, -0.9, 0.0]], dtype=torch.float64))


def test_value_gradcheck_and_explained_variance():
    g = torch.Generator().manual_seed(2)
    old = torch.randn(2, 4, generator=g, dtype=torch.float64)
    values = old + 0.1 * torch.randn(2, 4, generator=g, dtype=torch.float64)  # inside the clip range
    returns = torch.randn(2, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda v: clipped_value_loss(v, old, returns, mask)[0], (values.clone().requires_grad_(),))
    r = torch.tensor([1.0, 2.0, 3.0])
    m = torch.ones(3, dtype=torch.bool)
    assert explained_variance(r, r, m).item() == 1.0 and explained_variance(torch.zeros(3), r, m).item() == 0.0
