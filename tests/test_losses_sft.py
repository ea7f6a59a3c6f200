"""SFT loss: summed NLL per sequence, token counts for a global normaliser."""

import torch

from tether.losses.sft import sft_loss


def test_sft_loss_by_hand_padded_and_packed():
    """Padded: row 0 has completion logprobs −1, −2 (position 0 is prompt), row 1 has −0.5.
    nll = [3, 0.5], tokens = 3, nll_per_token = 3.5/3.
    Packed: the same three targets in one row with sequence ids [0, 0, 0, 1] -> the same nll."""
    logprobs = torch.tensor([[-9.0, -1.0, -2.0], [-0.5, -7.0, -7.0]])
    mask = torch.tensor([[False, True, True], [True, False, False]])
    nll, metrics = sft_loss(logprobs, mask)
    assert torch.allclose(nll, torch.tensor([3.0, 0.5]))
    assert metrics["tokens"].item() == 3
    assert abs(metrics["nll_per_token"].item() - 3.5 / 3) < 1e-6

    packed = torch.tensor([[-9.0, -1.0, -2.0, -0.5]])
    packed_mask = torch.tensor([[False, True, True, True]])
    ids = torch.tensor([[0, 0, 0, 1]])
    nll_packed, _ = sft_loss(packed, packed_mask, ids, 2)
    assert torch.allclose(nll_packed, nll)


def test_sft_gradcheck_and_raising_logprob_lowers_loss():
    torch.manual_seed(0)
    logprobs = -torch.rand(2, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    assert torch.autograd.gradcheck(lambda lp: sft_loss(lp, mask)[0], (logprobs,))
    base, _ = sft_loss(logprobs.detach(), mask)
    raised = logprobs.detach().clone()
    raised[0, 1] += 0.1
    after, _ = sft_loss(raised, mask)
    assert after[0] < base[0] and after[1] == base[1]
