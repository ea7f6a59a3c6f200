"""Model forward passes that stop before the vocabulary: hidden states, then chunked log-probabilities.

A causal LM is a backbone (embeddings, decoder layers, final norm) and an LM head
(a linear map to the vocabulary). Running the backbone ourselves and handing the head's
weight to ``tether.rl.token_logprobs`` gives per-token log-probabilities without the
[R, T, V] logits, and only at the positions that carry loss.
"""

from __future__ import annotations

import torch
from torch import nn

from tether.rl.logprobs import token_logprobs

# Config fields that change logits after the head; token_logprobs would silently ignore them.
_UNSUPPORTED_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def unwrap_peft(model):
    """The transformers model inside a PEFT wrapper (its LoRA layers still in place), else ``model``."""
    from tether.models.lora import is_peft_model

    return model.base_model.model if is_peft_model(model) else model


def backbone_and_head(model) -> tuple[nn.Module, nn.Linear]:
    """``(backbone, lm_head)`` of a causal LM, plain or PEFT-wrapped.

    The backbone maps ``input_ids`` to the final (normed) hidden states; the head is the
    linear layer that turns them into logits. For Llama-family models these are
    ``model.model`` and ``model.lm_head``.
    """
    inner = unwrap_peft(model)
    backbone = inner.get_decoder()
    head = inner.get_output_embeddings()
    if backbone is None or head is None:
        raise TypeError(f"{type(inner).__name__} does not expose a decoder and an output head")
    if not isinstance(head, nn.Linear) or not isinstance(head.weight, torch.Tensor):
        raise TypeError(
            f"the output head is a {type(head).__name__}, not a plain nn.Linear (is LoRA applied to lm_head?); "
            "chunked log-probabilities need the head's weight matrix"
        )
    for field in _UNSUPPORTED_LOGIT_TRANSFORMS:
        value = getattr(inner.config, field, None)
        if value not in (None, 1, 1.0):
            raise NotImplementedError(f"{type(inner).__name__} applies {field}={value} to its logits; not supported")
    return backbone, head


def forward_hidden(model, input_ids, position_ids=None, attention_mask=None) -> torch.Tensor:
    """Last hidden state [R, T, H] of the backbone (after the final norm), no KV cache.

    ``attention_mask=None`` with ``position_ids`` restarting at 0 is the packed layout:
    transformers builds the block-diagonal causal mask from the position ids. A floating-point
    [R, 1, T, T] mask (the shared-prompt layout) is additive and used as given.
    """
    backbone, _ = backbone_and_head(model)
    device = backbone.get_input_embeddings().weight.device  # batches are built on the CPU; a no-op there
    input_ids = input_ids.to(device, non_blocking=True)
    position_ids = position_ids.to(device, non_blocking=True) if position_ids is not None else None
    attention_mask = attention_mask.to(device, non_blocking=True) if attention_mask is not None else None
    if attention_mask is not None and attention_mask.is_floating_point():  # a 4-D additive mask must match the activations' dtype
        attention_mask = attention_mask.to(backbone.dtype)
    out = backbone(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state  # [R, T, H]


def masked_token_logprobs(hidden, head: nn.Linear, targets, mask, temperature: float = 1.0, chunk_size: int = 1024, return_entropy: bool = False):
    """Gather -> chunked log-probs: the log-prob of ``targets`` at the M positions where ``mask`` is
    True -> ``(logprobs [M], entropy [M] or None)``, in ``mask.nonzero()`` order.

    ``hidden`` [*, H], ``targets`` [*] long, ``mask`` [*] bool. The head runs on those M rows only,
    in chunks (``tether.rl.token_logprobs``), so no [*, V] logits are held. ``scatter_masked`` puts
    the values back. The offline trainers (``forward_token_logprobs``) and the online ones
    (``trainers.online.batch.response_logprobs``) both go through here.
    """
    mask = mask.to(device=hidden.device, dtype=torch.bool)
    result = token_logprobs(
        hidden[mask],  # [M, H]
        head.weight,
        targets.to(hidden.device)[mask],  # [M]
        bias=head.bias,
        temperature=temperature,
        chunk_size=chunk_size,
        return_entropy=return_entropy,
    )
    return result if return_entropy else (result, None)


def scatter_masked(values, mask):
    """[M] values back to ``mask``'s shape [*], zeros off the mask (the inverse of ``hidden[mask]``); differentiable."""
    mask = mask.to(device=values.device, dtype=torch.bool)
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).index_put(mask.nonzero(as_tuple=True), values)


def forward_token_logprobs(
    model,
    batch,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    return_entropy: bool = False,
):
    """Log-probability of ``batch.target_ids`` at each position, [R, T], zero where ``loss_mask`` is False.

    ``batch`` is a ``TokenBatch`` or anything with ``input_ids``, ``position_ids``,
    ``attention_mask`` (None when packed), ``target_ids`` and ``loss_mask``, all [R, T].
    The LM head runs only on the M positions of the loss mask. With ``return_entropy`` also
    returns the (detached) entropy of the next-token distribution, [R, T], zero off the mask.
    """
    _, head = backbone_and_head(model)
    hidden = forward_hidden(model, batch.input_ids, batch.position_ids, batch.attention_mask)  # [R, T, H]
    logprobs, entropy = masked_token_logprobs(hidden, head, batch.target_ids, batch.loss_mask, temperature, chunk_size, return_entropy)  # [M]
    if return_entropy:
        return scatter_masked(logprobs, batch.loss_mask), scatter_masked(entropy, batch.loss_mask)  # [R, T]
    return scatter_masked(logprobs, batch.loss_mask)  # [R, T]


__all__ = ["backbone_and_head", "forward_hidden", "forward_token_logprobs", "masked_token_logprobs", "scatter_masked", "unwrap_peft"]


def keep_first_layers(model, n: int) -> None:
    """Cut a causal LM's decoder to its first ``n`` layers, in place (plain or PEFT-wrapped).

    The final norm still follows, so the hidden states keep their scale; the config says ``n``
    layers, so a model saved afterwards reloads as the cut model. Why: a reward model for a
    lexical judgement (sentiment, say) reads what it needs from early layers, and a cut backbone
    costs a fraction of the full one to train and to score with."""
    inner = unwrap_peft(model)
    layers = inner.get_decoder().layers
    if not 1 <= n <= len(layers):
        raise ValueError(f"keeping the first {n} layers of a model with {len(layers)}: choose 1..{len(layers)}")
    inner.get_decoder().layers = layers[:n]
    inner.config.num_hidden_layers = n
    if isinstance(getattr(inner.config, "layer_types", None), list):  # per-layer attention kinds, where the config lists them
        inner.config.layer_types = inner.config.layer_types[:n]
