"""Responses laid out for a forward pass, and their log-probabilities and hidden states.

Response tensors are laid out like a ``Rollout``: [B, Tr], row b is response b, column t its
t-th generated token, ``mask`` True on generated tokens (including the eos that ended it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.rl.logprobs import log1mexp


@dataclass
class ResponseBatch:
    """Prompt + response tokens laid out for a forward pass, and where each response token sits.

    ``positions[b, t]`` is the flat index (row * T + column) of the hidden state that predicts
    response token t of response b: the policy's log-prob of that token and the value of the state
    before it both read it. By default responses to the same prompt (a GRPO/RLOO group, or PPO's
    samples of one prompt) share it: the prompt runs once and the responses branch off it under a
    4-D attention mask (``tether.data.shared_prefix``), exactly as separate rows would compute it.
    ``share_prompt=False`` gives one right-padded row per response.
    """

    input_ids: torch.Tensor  # [R, T] long
    attention_mask: torch.Tensor  # [R, T] long (padded) or [R, 1, T, T] additive float (shared prompt)
    position_ids: torch.Tensor  # [R, T] long
    positions: torch.Tensor  # [B, Tr] long, flat index of the hidden state that predicts response token t
    response_ids: torch.Tensor  # [B, Tr] long
    mask: torch.Tensor  # [B, Tr] bool
    # min_new_tokens: tokens the engine excluded at response columns < banned_until (see Rollout)
    banned_ids: tuple[int, ...] = ()
    banned_until: int = 0

    @classmethod
    def from_rollout(cls, rollout, pad_id: int, rows: torch.Tensor | None = None, share_prompt: bool = True) -> ResponseBatch:
        from tether.data.layouts import Layout, collate_layout

        rows = torch.arange(rollout.response_ids.shape[0]) if rows is None else rows
        sequences = rollout.sequences()
        chosen = [sequences[i] for i in rows.tolist()]  # (prompt + response ids, prompt_len) per response
        # Responses with identical prompt tokens form one example; its slots are laid out example-major.
        groups: dict[tuple[int, ...], list[int]] = {}
        for b, (ids, plen) in enumerate(chosen):
            groups.setdefault(tuple(ids[:plen]) if share_prompt else (b,), []).append(b)
        order = [b for members in groups.values() for b in members]  # sequence number -> response
        layout = Layout.SHARED_PROMPT if share_prompt else Layout.PADDED
        batch = collate_layout(layout, [[chosen[b] for b in members] for members in groups.values()], pad_id)
        # Each sequence's loss positions, in column order, are the states predicting its tokens 0, 1, ...
        owner = batch.sequence_ids.masked_fill(~batch.loss_mask, -1).reshape(-1)  # [R*T], -1 where no response token is predicted
        flat = (owner >= 0).nonzero().squeeze(1)  # [M]
        flat = flat[torch.argsort(owner[flat], stable=True)]  # [M], grouped by sequence, each in column order
        counts = torch.bincount(owner[owner >= 0], minlength=len(chosen)).tolist()
        response_ids, mask = rollout.response_ids[rows], rollout.response_mask[rows]  # [B, Tr]
        positions = torch.zeros(response_ids.shape, dtype=torch.long)  # [B, Tr]; 0 off the mask (never read)
        start = 0
        for seq, b in enumerate(order):
            positions[b, : counts[seq]] = flat[start : start + counts[seq]]
            start += counts[seq]
        return cls(
            batch.input_ids, batch.attention_mask, batch.position_ids, positions, response_ids, mask.bool(),
            banned_ids=getattr(rollout, "banned_ids", ()), banned_until=getattr(rollout, "banned_until", 0),
        )


def response_hidden(model, batch: ResponseBatch) -> torch.Tensor:
    """Backbone hidden states at the response positions -> [B, Tr, H], under the run's precision
    (``tether.parallel.autocast``: bf16 on CUDA by default)."""
    from tether.models import forward_hidden
    from tether.parallel import autocast

    with autocast():
        hidden = forward_hidden(model, batch.input_ids, batch.position_ids, batch.attention_mask)  # [R, T, H]
    return hidden.reshape(-1, hidden.shape[-1])[batch.positions.to(hidden.device)]  # [B, Tr, H]


def response_logprobs(model, hidden: torch.Tensor, batch: ResponseBatch, temperature: float, chunk_size: int, entropy: bool = False):
    """Log-probs [B, Tr] of the response tokens (0 off the mask) from ``response_hidden``; with
    ``entropy`` also the exact per-token entropy [B, Tr], detached.

    ``tether.rl.token_logprobs`` walks the vocabulary in chunks, so no [B, Tr, V] float logits
    are held. Its entropy comes without a gradient; an entropy *bonus* therefore uses the sample
    estimate −log π(y_t) (see ``entropy_surrogate``).

    Where the batch carries a ``min_new_tokens`` ban, the log-probs there are of the renormalised
    distribution the engine sampled from (see ``banned_renormaliser``); the entropy stays that of
    the full distribution (a metric only).
    """
    from tether.models.forward import backbone_and_head, masked_token_logprobs, scatter_masked

    from tether.parallel import autocast

    _, head = backbone_and_head(model)
    mask = batch.mask.to(hidden.device)  # [B, Tr]
    with autocast():
        logprobs, ent = masked_token_logprobs(hidden, head, batch.response_ids, mask, temperature, chunk_size, entropy)  # [M]
    if batch.banned_ids and batch.banned_until > 0:
        targets = batch.response_ids.to(hidden.device)[mask]  # [M]
        early = mask.nonzero(as_tuple=True)[1] < batch.banned_until  # [M] tokens drawn while the ban held
        if bool(early.any()):
            log_kept = banned_renormaliser(hidden[mask][early], head, targets[early], logprobs[early], batch.banned_ids, temperature)  # [m]
            logprobs = logprobs - torch.zeros_like(logprobs).index_put((early.nonzero(as_tuple=True)[0],), log_kept.to(logprobs.dtype))
    return scatter_masked(logprobs, mask), (scatter_masked(ent, mask) if entropy else None)  # [B, Tr]


def policy_logprobs(model, batch: ResponseBatch, temperature: float, chunk_size: int, entropy: bool = False):
    """``response_logprobs`` over ``response_hidden``: one forward pass of ``model`` over ``batch``
    -> (log-probs [B, Tr], entropy [B, Tr] or None). The function an FSDP root runs whole
    (``PolicyShards.run``), so the head's weights are gathered while it reads them."""
    return response_logprobs(model, response_hidden(model, batch), batch, temperature, chunk_size, entropy)


def banned_renormaliser(hidden: torch.Tensor, head, targets: torch.Tensor, logprobs: torch.Tensor, banned_ids, temperature: float) -> torch.Tensor:
    """log(1 − Σ_e π(e)) over the banned tokens e, per row: what renormalising over the others
    subtracts from log π(y). hidden [m, H], targets [m] (never banned), logprobs [m] = log π(y) -> [m].

    No second pass over the vocabulary: the normaliser cancels in a difference of logits,
        log π(e) = log π(y) + (z_e − z_y) / T,
    so only the banned tokens' and the targets' logits are computed. Differentiable.
    """
    ids = torch.as_tensor(banned_ids, device=hidden.device)  # [k]
    h = hidden.float()  # [m, H]
    banned_logits = h @ head.weight[ids].float().T  # [m, k]
    target_logits = (h * head.weight[targets].float()).sum(-1)  # [m]
    if head.bias is not None:
        banned_logits = banned_logits + head.bias[ids].float()
        target_logits = target_logits + head.bias[targets].float()
    log_banned = (logprobs.float()[:, None] + (banned_logits - target_logits[:, None]) / temperature).logsumexp(-1)  # [m] log Σ_e π(e), < 0
    return log1mexp(log_banned)


def entropy_surrogate(logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token term whose gradient, for tokens sampled from π, is an unbiased estimate of ∇H.

        ∇H = −Σ_y ∇π(y)·(log π(y) + 1) = −E_y[log π(y)·∇log π(y)]    (E[∇log π] = 0)

    so  −sg(log π(y))·log π(y)  has the right gradient; its value equals the sample estimate of H.
    """
    return -logprobs.detach() * logprobs


__all__ = ["ResponseBatch", "banned_renormaliser", "entropy_surrogate", "policy_logprobs", "response_hidden", "response_logprobs"]
