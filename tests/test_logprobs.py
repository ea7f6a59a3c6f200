"""Chunked token log-probabilities against the plain full-logits computation."""

import math

import pytest
import torch

from tether.rl.logprobs import token_logprobs


def plain_logprobs(hidden, weight, targets, bias=None, temperature=1.0):
    logits = hidden @ weight.T  # [N, V]
    if bias is not None:
        logits = logits + bias
    logp = torch.log_softmax(logits / temperature, dim=-1)  # [N, V]
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N]


def random_problem(n=13, h=6, v=17, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, generator=gen, dtype=dtype, requires_grad=True)
    bias = torch.randn(v, generator=gen, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=gen)
    return hidden, weight, bias, targets


def test_hand_computed_two_token_vocabulary():
    """V=2, H=1, weight = [[1], [-1]], hidden = [[a]], T=1: logits (a, -a).

    log p(0) = a - log(e^a + e^-a) = -log(1 + e^{-2a}); log p(1) = -log(1 + e^{2a}).
    d log p(0) / d a = 2 e^{-2a} / (1 + e^{-2a}) = 2 (1 - p0) = 2 p1.
    With a = 0.5: log p(0) = -log(1 + e^-1), gradient 2 / (1 + e).
    """
    a = 0.5
    hidden = torch.tensor([[a], [a]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    targets = torch.tensor([0, 1])
    logp = token_logprobs(hidden, weight, targets, chunk_size=1)
    assert logp[0].item() == pytest.approx(-math.log(1 + math.exp(-2 * a)), abs=1e-12)
    assert logp[1].item() == pytest.approx(-math.log(1 + math.exp(2 * a)), abs=1e-12)
    logp[0].backward()
    assert hidden.grad[0, 0].item() == pytest.approx(2 / (1 + math.exp(2 * a)), abs=1e-12)
    assert hidden.grad[1, 0].item() == 0.0


def test_uniform_logits_give_minus_log_v_and_entropy_log_v():
    """Zero hidden states make every logit zero: log p = -log V and entropy = log V for any target."""
    v = 37
    hidden = torch.zeros(5, 4)
    weight = torch.randn(v, 4)
    logp, entropy = token_logprobs(hidden, weight, torch.arange(5), chunk_size=2, return_entropy=True)
    torch.testing.assert_close(logp, torch.full((5,), -math.log(v)))
    torch.testing.assert_close(entropy, torch.full((5,), math.log(v)))


@pytest.mark.parametrize("chunk_size", [1, 4, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradcheck_float64(chunk_size, temperature):
    hidden, weight, bias, targets = random_problem()

    def fn(h, w, b):
        return token_logprobs(h, w, targets, bias=b, temperature=temperature, chunk_size=chunk_size)

    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_plain_float32_forward_and_backward(with_bias):
    hidden, weight, bias, targets = random_problem(n=50, h=16, v=300, dtype=torch.float32, seed=3)
    bias = bias if with_bias else None
    upstream = torch.randn(50, generator=torch.Generator().manual_seed(9))  # a non-uniform upstream gradient

    ours = token_logprobs(hidden, weight, targets, bias=bias, temperature=0.8, chunk_size=7)
    ours_grads = torch.autograd.grad((ours * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))
    ref = plain_logprobs(hidden, weight, targets, bias=bias, temperature=0.8)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))

    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(ours_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_entropy_matches_plain_and_is_detached():
    hidden, weight, bias, targets = random_problem(dtype=torch.float64)
    _, entropy = token_logprobs(hidden, weight, targets, bias=bias, temperature=1.3, chunk_size=5, return_entropy=True)
    logp_all = torch.log_softmax((hidden @ weight.T + bias) / 1.3, dim=-1)  # [N, V]
    torch.testing.assert_close(entropy, -(logp_all.exp() * logp_all).sum(-1).detach())
    assert not entropy.requires_grad


def test_leading_dims_are_flattened_and_restored():
    hidden, weight, _, _ = random_problem(n=12, dtype=torch.float32)
    targets = torch.randint(0, weight.shape[0], (3, 4))
    out = token_logprobs(hidden.detach().view(3, 4, -1), weight, targets, chunk_size=5)
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.reshape(-1), plain_logprobs(hidden, weight, targets.reshape(-1)))


def test_frozen_weight_gets_no_gradient_and_hidden_still_does():
    hidden, weight, _, targets = random_problem(dtype=torch.float32)
    frozen = weight.detach()
    token_logprobs(hidden, frozen, targets, chunk_size=4).sum().backward()
    ref = torch.autograd.grad(plain_logprobs(hidden, frozen, targets).sum(), hidden)[0]
    assert frozen.grad is None
    torch.testing.assert_close(hidden.grad, ref)


def test_result_does_not_depend_on_chunk_size():
    hidden, weight, bias, targets = random_problem(n=31, dtype=torch.float64)
    results = [token_logprobs(hidden, weight, targets, bias=bias, chunk_size=c) for c in (1, 3, 31, 64)]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=1e-12)


def test_empty_input():
    weight = torch.randn(11, 4, requires_grad=True)
    hidden = torch.zeros(0, 4, requires_grad=True)
    out = token_logprobs(hidden, weight, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert torch.count_nonzero(weight.grad) == 0


def test_rejects_bad_arguments():
    hidden, weight, _, targets = random_problem(dtype=torch.float32)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="leading dims"):
        token_logprobs(hidden, weight, targets[:-1])
    with pytest.raises(ValueError, match="hidden size"):
        token_logprobs(hidden, weight[:, :-1], targets)
