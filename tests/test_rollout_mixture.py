"""Sampling from the token-level geometric mixture of a policy and its reference (Nash-MD)."""

import copy

import pytest
import torch

from tether.losses.nash import geometric_mixture_logprobs
from tether.rollout.engine import SamplingParams, encode_prompts
from tether.rollout.mixture import sample_mixture, sample_reference
from tether.trainers.online.rollout import sample_responses

torch.set_num_threads(1)

PROMPTS = ["Tell me about rivers.", "Hi", "Write one line."]
PARAMS = SamplingParams(max_new_tokens=6, temperature=0.9)


def _policy_and_reference(mode):
    """A policy that differs from its reference: a perturbed copy (``copy``), or LoRA adapters with
    nonzero B (``adapter``: the reference is the same model with adapters off)."""
    from tether.models.lora import apply_lora
    from tether.models.tiny import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    if mode == "copy":
        frozen = copy.deepcopy(model).eval().requires_grad_(False)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        return model, tok, frozen
    model = apply_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    return model, tok, None


def _gen(seed=3):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", ["copy", "adapter"])
def test_mixture_endpoints_are_the_two_models(mode):
    """β = 0 draws exactly what the policy draws with the same generator, β = 1 what the reference draws."""
    policy, tok, frozen = _policy_and_reference(mode)
    alone = sample_responses(policy, tok, PROMPTS, 2, PARAMS, _gen())
    mixed = sample_mixture(policy, tok, PROMPTS, 2, PARAMS, _gen(), 0.0, frozen)
    assert torch.equal(alone.response_ids, mixed.response_ids)
    torch.testing.assert_close(alone.logprobs, mixed.logprobs, atol=1e-5, rtol=0)
    ref = sample_reference(policy, tok, PROMPTS, 2, PARAMS, _gen(), frozen)
    mixed_ref = sample_mixture(policy, tok, PROMPTS, 2, PARAMS, _gen(), 1.0, frozen)
    assert torch.equal(ref.response_ids, mixed_ref.response_ids)
    assert not torch.equal(alone.response_ids, ref.response_ids)  # the two models do differ


@pytest.mark.parametrize("mode", ["copy", "adapter"])
def test_mixture_logprobs_match_full_forwards_of_both_models(mode):
    """With β = 0.3, every sampled token's log-prob equals log_softmax((0.7·z_π + 0.3·z_ref) / T)
    at that token, z from plain full-sequence forwards of the policy and of the reference."""
    from tether.rollout.mixture import reference_model_and_context

    policy, tok, frozen = _policy_and_reference(mode)
    rollout = sample_mixture(policy, tok, PROMPTS, 1, PARAMS, _gen(5), 0.3, frozen)
    ref_model, ref_context = reference_model_and_context(policy, frozen)
    for b, ids in enumerate(encode_prompts(tok, PROMPTS)):
        n = int(rollout.response_mask[b].sum())
        seq = torch.tensor([ids + rollout.response_ids[b, :n].tolist()])  # [1, P + n]
        with torch.no_grad():
            z = policy(seq).logits[0, len(ids) - 1 : len(ids) - 1 + n]  # [n, V], predicting each response token
            with ref_context():
                z_ref = ref_model(seq).logits[0, len(ids) - 1 : len(ids) - 1 + n]  # [n, V]
        expected = geometric_mixture_logprobs(z, z_ref, 0.3, PARAMS.temperature).gather(-1, rollout.response_ids[b, :n, None])[:, 0]  # [n]
        torch.testing.assert_close(rollout.logprobs[b, :n], expected, atol=1e-4, rtol=0)
