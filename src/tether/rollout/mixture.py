"""Sampling from the token-level geometric mixture of a policy and its reference (Nash-MD).

At every position the next token is drawn from π_mix(· | prefix) ∝ π(· | prefix)^(1−β) ·
π_ref(· | prefix)^β, whose logits are (1 − β)·z_π + β·z_ref (``tether.losses.nash``). Each model
keeps its own KV cache through the engine's ordinary decoders (the static Llama decoder where it
applies), so a mixture step costs one decode step of each model; the engine's ``Sampler`` then
applies temperature, top-k/top-p and the stop rules as for any rollout.

The reference is a frozen copy, or the policy itself with its LoRA adapters off: then the
reference decoder is built, and every reference step runs, inside ``disabled_adapter`` (the static
decoder folds the weights it sees at construction, so it holds the base weights).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


class MixtureDecoder:
    """``prefill`` / ``step`` like the engine's decoders, returning the mixed logits [B, V]."""

    def __init__(self, policy_decoder, ref_decoder, mixture_coef: float, ref_context):
        self.policy, self.ref, self.coef, self.ref_context = policy_decoder, ref_decoder, mixture_coef, ref_context

    def _mix(self, z_policy: torch.Tensor, z_ref: torch.Tensor) -> torch.Tensor:
        # Unnormalised: each model's log-normaliser is constant over the vocabulary and cancels.
        return (1.0 - self.coef) * z_policy.float() + self.coef * z_ref.float()  # [B, V]

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        z = self.policy.prefill(input_ids, attention_mask, position_ids)  # [B, V]
        with self.ref_context():
            z_ref = self.ref.prefill(input_ids, attention_mask, position_ids)  # [B, V]
        return self._mix(z, z_ref)

    def step(self, tokens, positions, slot: int) -> torch.Tensor:
        z = self.policy.step(tokens, positions, slot)  # [B, V]
        with self.ref_context():
            z_ref = self.ref.step(tokens, positions, slot)  # [B, V]
        return self._mix(z, z_ref)


def reference_model_and_context(policy, frozen=None):
    """(model, context factory) that computes the reference: ``frozen`` as it is, or the policy
    with its adapters off."""
    if frozen is not None:
        return frozen, nullcontext
    from tether.models import disabled_adapter

    return policy, lambda: disabled_adapter(policy)


def mixture_decoder(policy, mixture_coef: float, frozen=None, path="auto"):
    """A ``generate(..., decoder=...)`` factory sampling from the geometric mixture of ``policy``
    and its reference (``frozen``, or ``policy`` with adapters off)."""
    from tether.rollout.engine import DECODERS, resolve_path

    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must lie in [0, 1], got {mixture_coef}")
    ref_model, ref_context = reference_model_and_context(policy, frozen)

    def build(model, batch: int, max_length: int) -> MixtureDecoder:
        policy_decoder = DECODERS[resolve_path(policy, path)](policy, batch, max_length)
        with ref_context():
            ref_decoder = DECODERS[resolve_path(ref_model, path)](ref_model, batch, max_length)
        return MixtureDecoder(policy_decoder, ref_decoder, mixture_coef, ref_context)

    return build


@torch.no_grad()
def sample_mixture(policy, tokenizer, prompts, group_size: int, params, generator, mixture_coef: float, frozen=None, path="auto", positions=None, total_prompts: int = 0):
    """``group_size`` replies per prompt from the geometric mixture, laid out like
    ``tether.trainers.online.sample_responses`` (group-major, and with its ``positions`` /
    ``total_prompts`` for a step split across processes); log-probs are π_mix's."""
    from tether.rollout.engine import encode_prompts, generate

    models = [policy] + ([frozen] if frozen is not None else [])
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    ids = encode_prompts(tokenizer, prompts)
    rows = None if positions is None else [p * group_size + j for p in positions for j in range(group_size)]
    rollout = generate(
        policy, tokenizer, [p for p in ids for _ in range(group_size)], params, generator, decoder=mixture_decoder(policy, mixture_coef, frozen, path), rows=rows, total_rows=total_prompts * group_size
    )
    for m, mode in zip(models, modes):
        m.train(mode)
    return rollout


@torch.no_grad()
def sample_reference(policy, tokenizer, prompts, group_size: int, params, generator, frozen=None, positions=None, total_prompts: int = 0):
    """Replies from the reference alone (a frozen copy, or the policy with adapters off);
    ``positions`` / ``total_prompts`` as in ``sample_responses``."""
    from tether.trainers.online.rollout import sample_responses

    ref_model, ref_context = reference_model_and_context(policy, frozen)
    with ref_context():
        return sample_responses(ref_model, tokenizer, prompts, group_size, params, generator, positions, total_prompts)


__all__ = ["MixtureDecoder", "mixture_decoder", "reference_model_and_context", "sample_mixture", "sample_reference"]
