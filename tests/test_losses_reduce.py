"""Masked reductions, per-sequence sums and the global-normaliser accumulation property."""

import torch

from tether.losses.reduce import masked_mean, masked_sum, masked_var, sum_per_sequence, token_mean_global


def test_masked_sum_and_mean_by_hand():
    """values [[1, 2, 3], [4, 5, 6]], mask [[T, T, F], [F, T, F]]:
    sum = 1 + 2 + 5 = 8, mean = 8/3; per row: sums [3, 5], means [1.5, 5]."""
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    assert masked_sum(values, mask).item() == 8.0
    assert abs(masked_mean(values, mask).item() - 8 / 3) < 1e-6
    assert torch.equal(masked_sum(values, mask, dim=-1), torch.tensor([3.0, 5.0]))
    assert torch.equal(masked_mean(values, mask, dim=-1), torch.tensor([1.5, 5.0]))


def test_masked_mean_of_nothing_is_zero_and_padding_nan_does_not_leak():
    values = torch.tensor([1.0, float("nan"), float("inf")], requires_grad=True)
    mask = torch.tensor([True, False, False])
    out = masked_mean(values, mask)
    out.backward()
    assert out.item() == 1.0
    assert torch.equal(values.grad, torch.tensor([1.0, 0.0, 0.0]))
    assert masked_mean(torch.ones(3), torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_masked_var_by_hand():
    """Entries 1, 2, 3 (4 masked out): mean 2, Σ(x−μ)² = 2, unbiased var 2/2 = 1, biased 2/3."""
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([True, True, True, False])
    assert abs(masked_var(values, mask).item() - 1.0) < 1e-6
    assert abs(masked_var(values, mask, unbiased=False).item() - 2 / 3) < 1e-6


def test_sum_per_sequence_packed_by_hand():
    """Row 0 packs sequences 0 and 1, row 1 holds sequence 2 then padding:
    seq 0 = 1 + 2 = 3 (position 2 is masked out), seq 1 = 4 + 5 = 9, seq 2 = 6."""
    values = torch.tensor([[1.0, 2.0, 100.0, 4.0, 5.0], [6.0, 7.0, 7.0, 7.0, 7.0]], requires_grad=True)
    ids = torch.tensor([[0, 0, 0, 1, 1], [2, -1, -1, -1, -1]])
    mask = torch.tensor([[True, True, False, True, True], [True, False, False, False, False]])
    out = sum_per_sequence(values, ids, mask, 3)
    assert torch.equal(out, torch.tensor([3.0, 9.0, 6.0]))
    out.sum().backward()
    assert torch.equal(values.grad, mask.float())


def test_accumulated_micro_batches_equal_full_batch_loss_and_gradient():
    """Splitting rows into micro-batches and summing token_mean_global(piece, M) with the step's
    token count M reproduces the full-batch token mean and its gradient; a per-piece mean does not."""
    torch.manual_seed(0)
    weights = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(6, 7, dtype=torch.float64)
    mask = torch.rand(6, 7) < 0.6
    mask[0] = True  # uneven token counts per piece, so a naive mean of means differs
    mask[5, 1:] = False
    total_tokens = mask.sum()

    full = token_mean_global(weights * inputs, mask, total_tokens)
    (full_grad,) = torch.autograd.grad(full, weights)
    assert torch.allclose(full, (weights * inputs)[mask].mean())

    accumulated = torch.zeros((), dtype=torch.float64)
    grad = torch.zeros_like(weights)
    naive = torch.zeros((), dtype=torch.float64)
    pieces = [slice(0, 1), slice(1, 4), slice(4, 6)]
    for rows in pieces:
        piece = token_mean_global(weights[rows] * inputs[rows], mask[rows], total_tokens)
        (g,) = torch.autograd.grad(piece, weights)
        accumulated, grad = accumulated + piece.detach(), grad + g
        naive = naive + masked_mean((weights[rows] * inputs[rows]).detach(), mask[rows]) / len(pieces)
    assert torch.allclose(accumulated, full.detach(), atol=1e-12)
    assert torch.allclose(grad, full_grad, atol=1e-12)
    assert not torch.allclose(naive, full.detach(), atol=1e-3)
