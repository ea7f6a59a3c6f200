"""Reward-model losses: Bradley–Terry and Plackett–Luce."""

import math

import torch

from tether.losses.reward import bradley_terry_loss, plackett_luce_loss, plackett_luce_nll


def sp(x: float) -> float:
    """−log σ(x)."""
    return math.log1p(math.exp(-x))


def test_bradley_terry_by_hand():
    """r_c = [2, 0], r_r = [1, 1]:
    no margin: [sp(1), sp(−1)]; margin 0.5: [sp(0.5), sp(−1.5)];
    centring c = 0.1 adds 0.1·(r_c + r_r)² = [0.9, 0.1].
    accuracy 1/2, mean margin (1 + (−1))/2 = 0."""
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    losses, metrics = bradley_terry_loss(rc, rr)
    assert torch.allclose(losses, torch.tensor([sp(1.0), sp(-1.0)]), atol=1e-6)
    assert metrics["accuracy"].item() == 0.5 and metrics["margin"].item() == 0.0
    with_margin, _ = bradley_terry_loss(rc, rr, margin=torch.tensor([0.5, 0.5]))
    assert torch.allclose(with_margin, torch.tensor([sp(0.5), sp(-1.5)]), atol=1e-6)
    centred, _ = bradley_terry_loss(rc, rr, centering_coef=0.1)
    assert torch.allclose(centred, torch.tensor([sp(1.0) + 0.9, sp(-1.0) + 0.1]), atol=1e-6)


def test_plackett_luce_by_hand():
    """r = [3, 1, 2] best first:
    nll = (−3 + log(e³ + e + e²)) + (−1 + log(e + e²)) + 0.
    Pairs in order: (3 > 1) yes, (3 > 2) yes, (1 > 2) no -> accuracy 2/3; gaps 2, 1, −1 -> margin 2/3."""
    e = math.e
    losses, metrics = plackett_luce_loss(torch.tensor([[3.0, 1.0, 2.0]]))
    expected = (-3 + math.log(e**3 + e + e**2)) + (-1 + math.log(e + e**2))
    assert abs(losses.item() - expected) < 1e-6
    assert abs(metrics["accuracy"].item() - 2 / 3) < 1e-6 and abs(metrics["margin"].item() - 2 / 3) < 1e-6


def test_plackett_luce_with_two_is_bradley_terry_and_centring_matches():
    torch.manual_seed(0)
    rc, rr = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    bt, _ = bradley_terry_loss(rc, rr, centering_coef=0.05)
    pl, _ = plackett_luce_loss(torch.stack([rc, rr], 1), centering_coef=0.05)
    assert torch.allclose(bt, pl, atol=1e-12)


def test_plackett_luce_mask_equals_truncated_ranking_and_has_finite_zero_grads():
    """A ranking of 2 stored in K = 4 with a mask gives the K = 2 loss; masked scores get 0 gradient."""
    scores = torch.tensor([[1.0, 0.5, 7.0, -3.0], [0.2, 0.1, 0.4, 0.3]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    nll = plackett_luce_nll(scores, mask)
    assert abs(nll[0].item() - sp(0.5)) < 1e-12
    assert abs(nll[1].item() - plackett_luce_nll(scores[1:].detach()).item()) < 1e-12
    nll.sum().backward()
    assert torch.isfinite(scores.grad).all() and (scores.grad[0, 2:] == 0).all()


def test_reward_losses_gradcheck_and_property():
    g = torch.Generator().manual_seed(1)
    rc, rr = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    margin = torch.rand(4, generator=g, dtype=torch.float64)
    bt = lambda c, r: bradley_terry_loss(c, r, margin=margin, centering_coef=0.01)[0]  # noqa: E731
    assert torch.autograd.gradcheck(bt, (rc.clone().requires_grad_(), rr.clone().requires_grad_()))
    assert (bradley_terry_loss(rc + 0.1, rr)[0] < bradley_terry_loss(rc, rr)[0]).all()

    rewards = torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, True, False, False]])
    pl = lambda r: plackett_luce_loss(r, mask, centering_coef=0.0)[0]  # noqa: E731
    assert torch.autograd.gradcheck(pl, (rewards.clone().requires_grad_(),))
    raised = rewards.clone()
    raised[:, 0] += 0.1
    assert (pl(raised) < pl(rewards)).all()


def test_training_accuracy_counts_ties_as_half_like_rm_eval():
    """Gaps +1, 0, −1: one right, one tie, one wrong -> (1 + 1/2 + 0) / 3 = 1/2 in the Bradley–Terry
    metric, the Plackett–Luce metric over the same pairs, the DPO family's implicit-reward accuracy
    and the ``tether rm eval`` report alike (one definition, ``pairwise_accuracy``)."""
    from tether.evaluate.reward_metrics import reward_model_report
    from tether.losses.preference import preference_loss

    rc, rr = torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 2.0, 1.0])
    _, bt = bradley_terry_loss(rc, rr)
    _, pl = plackett_luce_loss(torch.stack([rc, rr], 1))
    zero = torch.zeros(3)
    _, dpo = preference_loss("dpo", policy_chosen=rc, policy_rejected=rr, ref_chosen=zero, ref_rejected=zero, beta=1.0)
    report = reward_model_report(rc, rr, torch.ones(3), torch.ones(3))
    assert bt["accuracy"].item() == pl["accuracy"].item() == dpo["rewards/accuracy"].item() == report["accuracy"] == 0.5
