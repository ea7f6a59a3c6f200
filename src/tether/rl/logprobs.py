"""Per-token log-probabilities from hidden states without the full-vocabulary logits.

The plain way, ``log_softmax(hidden @ W.T / T).gather(targets)``, holds an [N, V] float32
logits tensor, its log-softmax and, in backward, a gradient of the same size: at N=4096
tokens and SmolLM2's V=49152 that is 800 MB each. Only two numbers per row matter, the
target logit and the log-partition, so ``token_logprobs`` walks the rows in chunks,
keeps those two, and recomputes each chunk's softmax in backward.

Gradient (one row, z = (W h + b) / T, p = softmax(z), y the target):
    d logp_y / d z_j = 1[j = y] - p_j
    d/dh = W.T g / T,   d/dW = g h.T / T,   d/db = g / T      with g_j = grad_out * (1[j = y] - p_j)
"""

from __future__ import annotations

import torch

__all__ = ["log1mexp", "token_logprobs"]


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate everywhere (Mächler 2012).

    Near 0, 1 − exp(x) cancels: use log(−expm1(x)); far below, exp(x) is tiny: log1p(−exp(x)).
    Used by ORPO's log-odds and by the ``min_new_tokens`` renormaliser of online RL.
    """
    near_zero = x > -0.6931471805599453  # −log 2
    # Evaluate each branch only where it is accurate; the other input is a harmless stand-in, so
    # neither branch produces an inf or NaN whose gradient would leak through torch.where.
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax arithmetic runs in at least float32 (float64 stays float64, for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(hidden_chunk, weight, bias, temperature):
    """Logits of one chunk of rows, in the compute dtype: [C, H] x [V, H] -> [C, V]."""
    logits = hidden_chunk @ weight.T  # [C, V] in the input dtype: bf16 matmuls stay fast
    if bias is not None:
        logits = logits + bias
    logits = logits.to(_compute_dtype(logits.dtype))  # [C, V]
    if temperature != 1.0:
        logits = logits / temperature
    return logits


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, return_entropy):
        num_rows = hidden.shape[0]
        acc_dtype = _compute_dtype(hidden.dtype)
        logprobs = torch.empty(num_rows, dtype=acc_dtype, device=hidden.device)  # [N]
        log_partition = torch.empty(num_rows, dtype=acc_dtype, device=hidden.device)  # [N]
        entropy = torch.empty(num_rows if return_entropy else 0, dtype=acc_dtype, device=hidden.device)
        for start in range(0, num_rows, chunk_size):
            rows = slice(start, min(start + chunk_size, num_rows))
            logits = _chunk_logits(hidden[rows], weight, bias, temperature)  # [C, V]
            lse = torch.logsumexp(logits, dim=-1)  # [C]
            target_logit = logits.gather(1, targets[rows].unsqueeze(1)).squeeze(1)  # [C]
            log_partition[rows] = lse
            logprobs[rows] = target_logit - lse
            if return_entropy:
                probs = torch.exp(logits - lse.unsqueeze(1))  # [C, V]
                # H = -sum p log p = lse - sum p z
                entropy[rows] = lse - (probs * logits).sum(dim=-1)
            del logits
        ctx.save_for_backward(hidden, weight, bias, targets, log_partition)
        ctx.temperature = temperature
        ctx.chunk_size = chunk_size
        ctx.mark_non_differentiable(entropy)  # entropy is a metric/bonus term; its gradient is not provided
        return logprobs.to(hidden.dtype), entropy.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):
        hidden, weight, bias, targets, log_partition = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        acc_dtype = log_partition.dtype
        num_rows = hidden.shape[0]

        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # [N, H]
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_weight else None  # [V, H]
        grad_bias = torch.zeros(bias.shape, dtype=acc_dtype, device=bias.device) if need_bias else None  # [V]
        for start in range(0, num_rows, chunk_size):
            rows = slice(start, min(start + chunk_size, num_rows))
            logits = _chunk_logits(hidden[rows], weight, bias, temperature)  # [C, V]
            # g = grad_out * (onehot(y) - p) / T, built in place over the logits buffer to save a [C, V] copy.
            grad_logits = logits.sub_(log_partition[rows].unsqueeze(1)).exp_().neg_()  # [C, V] = -p
            row_index = torch.arange(grad_logits.shape[0], device=grad_logits.device)
            grad_logits[row_index, targets[rows]] += 1.0
            grad_logits.mul_((grad_logprobs[rows].to(acc_dtype) / temperature).unsqueeze(1))
            grad_logits_in = grad_logits.to(hidden.dtype)  # matmuls in the input dtype, like forward
            if need_hidden:
                grad_hidden[rows] = grad_logits_in @ weight  # [C, H]
            if need_weight and grad_weight.dtype == hidden.dtype:
                grad_weight.addmm_(grad_logits_in.T, hidden[rows])  # [V, H], accumulated without a [V, H] temporary
            elif need_weight:
                grad_weight += (grad_logits_in.T @ hidden[rows]).to(acc_dtype)  # [V, H]
            if need_bias:
                grad_bias += grad_logits.sum(dim=0)  # [V]
            del logits, grad_logits, grad_logits_in
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_entropy: bool = False,
):
    """Log-probability of each target token under ``softmax((hidden @ weight.T + bias) / temperature)``.

    Args:
        hidden: [*, H] final hidden states (after the final norm), any float dtype.
        weight: [V, H] output projection (the LM head weight).
        targets: [*] long token ids in ``[0, V)``; same leading shape as ``hidden``.
        bias: optional [V] output bias.
        temperature: logits are divided by it before the softmax (sampling temperature).
        chunk_size: rows per chunk; peak extra memory is about ``2 * chunk_size * V`` floats.
        return_entropy: also return the entropy of each row's distribution. The entropy is
            detached (no gradient flows through it); use it as a metric.

    Returns:
        logprobs [*] in ``hidden``'s dtype, differentiable w.r.t. hidden, weight and bias;
        and ``entropy`` [*] if ``return_entropy``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    lead_shape = targets.shape
    if hidden.shape[:-1] != lead_shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(lead_shape)} disagree on leading dims")
    if weight.shape[-1] != hidden.shape[-1]:
        raise ValueError(f"weight {tuple(weight.shape)} does not match hidden size {hidden.shape[-1]}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    flat_targets = targets.reshape(-1).long()  # [N]
    logprobs, entropy = _ChunkedTokenLogprobs.apply(
        flat_hidden, weight, bias, flat_targets, float(temperature), int(chunk_size), bool(return_entropy)
    )
    logprobs = logprobs.view(lead_shape)
    if return_entropy:
        return logprobs, entropy.view(lead_shape)
    return logprobs
