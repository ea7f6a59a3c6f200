"""Lean activations: the patched model computes the same outputs and gradients, and saves less."""

import copy

import pytest
import torch
import torch.nn.functional as F

from tether.models import apply_lean_activations, apply_lora, save_model, tiny_model, tiny_tokenizer
from tether.models.lean import RMSNormWithWeight, SavedTensorMeter, SiluTimesUp, remove_lean_activations

HIDDEN, INTERMEDIATE, LAYERS = 64, 192, 2
ROWS, COLUMNS = 2, 12
TOKENS = ROWS * COLUMNS
# Relative to the largest entry of each tensor. The norm's backward sums its terms in another
# order than autograd, which moves float32 gradients by about one ulp per layer (measured ~1e-6).
FP32_RTOL = 1e-5


def make_model(seed=0):
    return tiny_model(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_layers=LAYERS, seed=seed)


def randomize_norm_weights(model, seed=1):
    """Norm weights start at 1, which hides a weight that is applied twice or not at all."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * 0.5 + ("norm" in name))


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (ROWS, COLUMNS), generator=gen)  # [rows, columns]


def forward_backward(model, input_ids):
    """Logits and ``{name: grad}`` of a causal-LM loss; the model's grads are cleared first."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=input_ids, labels=input_ids)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def assert_close_to_scale(actual, expected, rtol):
    """Elementwise ``|a - e| <= rtol * max|e|``: gradients of tiny entries need no relative match."""
    scale = expected.abs().max().clamp_min(1e-12)
    assert (actual - expected).abs().max() <= rtol * scale, f"max diff {(actual - expected).abs().max():.3g} vs scale {scale:.3g}"


def assert_same_results(reference, patched, input_ids, rtol):
    ref_logits, ref_grads = forward_backward(reference, input_ids)
    lean_logits, lean_grads = forward_backward(patched, input_ids)
    assert_close_to_scale(lean_logits.float(), ref_logits.float(), rtol)
    assert ref_grads.keys() == lean_grads.keys() and ref_grads
    for name, grad in ref_grads.items():
        assert_close_to_scale(lean_grads[name].float(), grad.float(), rtol)


def test_functions_pass_gradcheck_in_float64():
    gen = torch.Generator().manual_seed(0)
    gate = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SiluTimesUp.apply, (gate, up))
    x = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: RMSNormWithWeight.apply(x, w, 1e-5), (x, weight))
    # one input frozen: the other's gradient alone (the LoRA case: norm weights frozen)
    assert torch.autograd.gradcheck(lambda x: RMSNormWithWeight.apply(x, weight.detach(), 1e-5), (x,))
    assert torch.autograd.gradcheck(lambda up: SiluTimesUp.apply(gate.detach(), up), (up,))


def test_functions_match_the_plain_expressions_in_bf16():
    gen = torch.Generator().manual_seed(0)
    gate, up, grad = (torch.randn(4, 8, 32, generator=gen).to(torch.bfloat16) for _ in range(3))
    x = torch.randn(4, 8, 32, generator=gen).to(torch.bfloat16)
    weight = torch.randn(32, generator=gen)  # float32 weight on a bf16 input: the output is float32, as in transformers

    def plain_norm(x, weight):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

    for function, plain, inputs in (
        (SiluTimesUp.apply, lambda g, u: F.silu(g) * u, (gate, up)),
        (lambda x, w: RMSNormWithWeight.apply(x, w, 1e-5), plain_norm, (x, weight)),
    ):
        ref_inputs = [t.clone().requires_grad_() for t in inputs]
        lean_inputs = [t.clone().requires_grad_() for t in inputs]
        ref_out, lean_out = plain(*ref_inputs), function(*lean_inputs)
        assert lean_out.dtype == ref_out.dtype
        torch.testing.assert_close(lean_out, ref_out, rtol=0, atol=0)  # same ops in the same order
        ref_grads = torch.autograd.grad(ref_out, ref_inputs, grad.to(ref_out.dtype))
        lean_grads = torch.autograd.grad(lean_out, lean_inputs, grad.to(lean_out.dtype))
        for lean_grad, ref_grad in zip(lean_grads, ref_grads):
            assert lean_grad.dtype == ref_grad.dtype
            assert_close_to_scale(lean_grad.float(), ref_grad.float(), rtol=2e-2)


def test_patches_every_mlp_and_norm_once():
    model = make_model()
    assert apply_lean_activations(model) == LAYERS * 3 + 1  # MLP and two norms per layer, and the final norm
    assert apply_lean_activations(model) == 0  # already lean
    assert remove_lean_activations(model) == LAYERS * 3 + 1
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_leaves_other_architectures_alone():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.LayerNorm(8))
    assert apply_lean_activations(model) == 0

    class LookAlikeRMSNorm(torch.nn.Module):  # the right attributes, a different computation
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return x * (1 + self.weight)

    assert apply_lean_activations(torch.nn.Sequential(LookAlikeRMSNorm())) == 0


def test_fp32_outputs_and_gradients_match_the_unpatched_model():
    reference = make_model()
    randomize_norm_weights(reference)
    patched = copy.deepcopy(reference)
    assert apply_lean_activations(patched) > 0
    assert_same_results(reference, patched, batch(), rtol=FP32_RTOL)


def test_fp32_with_lora_matches_the_unpatched_model():
    reference = apply_lora(make_model(), r=4, alpha=8)  # all-linear: adapters inside the MLP projections too
    randomize_norm_weights(reference)
    patched = copy.deepcopy(reference)
    assert apply_lean_activations(patched) == LAYERS * 3 + 1
    assert_same_results(reference, patched, batch(), rtol=FP32_RTOL)
    assert any("lora_B" in name for name, p in patched.named_parameters() if p.grad is not None)


def test_fp32_with_gradient_checkpointing_matches():
    reference = make_model()
    randomize_norm_weights(reference)
    patched = copy.deepcopy(reference)
    patched.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    apply_lean_activations(patched)
    patched.train()
    assert_same_results(reference, patched, batch(), rtol=FP32_RTOL)


def test_bf16_matches_within_bf16_tolerance():
    reference = make_model().to(torch.bfloat16)
    randomize_norm_weights(reference)
    patched = copy.deepcopy(reference)
    apply_lean_activations(patched)
    ref_logits, ref_grads = forward_backward(reference, batch())
    lean_logits, lean_grads = forward_backward(patched, batch())
    torch.testing.assert_close(lean_logits, ref_logits)  # bf16 defaults: rtol 1.6e-2, atol 1e-5
    for name, grad in ref_grads.items():
        assert_close_to_scale(lean_grads[name].float(), grad.float(), rtol=3e-2)


def test_no_grad_and_eval_compute_directly():
    reference = make_model()
    patched = copy.deepcopy(reference)
    apply_lean_activations(patched)
    reference.eval(), patched.eval()
    with torch.no_grad():
        torch.testing.assert_close(patched(input_ids=batch()).logits, reference(input_ids=batch()).logits, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(patched(input_ids=batch()).logits, reference(input_ids=batch()).logits, rtol=0, atol=0)


def test_patched_model_saves_fewer_activation_bytes():
    def saved_bytes(model):
        with SavedTensorMeter(ignore=list(model.parameters())) as meter:
            loss = model(input_ids=batch(), labels=batch()).loss
        loss.backward()
        return meter.activation_bytes

    reference = make_model()
    patched = copy.deepcopy(reference)
    apply_lean_activations(patched)
    # Per layer the MLP drops silu(gate) [tokens, intermediate]; every norm (two per layer and the
    # final one) drops its normalised output [tokens, hidden]; float32 is 4 bytes.
    expected_saving = 4 * TOKENS * (LAYERS * INTERMEDIATE + (2 * LAYERS + 1) * HIDDEN)
    before, after = saved_bytes(reference), saved_bytes(patched)
    assert before - after >= expected_saving, (before, after, expected_saving)


def test_state_dict_and_saved_files_are_unchanged(tmp_path):
    model = make_model()
    keys_before = list(model.state_dict())
    save_model(model, tiny_tokenizer(), tmp_path / "plain")
    apply_lean_activations(model)
    assert list(model.state_dict()) == keys_before
    save_model(model, tiny_tokenizer(), tmp_path / "lean")
    for path in sorted((tmp_path / "plain").iterdir()):
        assert path.read_bytes() == (tmp_path / "lean" / path.name).read_bytes(), path.name


def test_deepcopy_keeps_the_copy_lean_and_independent():
    model = make_model()
    apply_lean_activations(model)
    clone = copy.deepcopy(model)
    mlp = clone.model.layers[0].mlp
    assert mlp.forward.__self__ is mlp  # bound to the copy, not the original
    assert apply_lean_activations(clone) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches():
    reference = make_model().cuda()
    randomize_norm_weights(reference)
    patched = copy.deepcopy(reference)
    apply_lean_activations(patched)
    assert_same_results(reference, patched, batch().cuda(), rtol=1e-5)


def test_model_config_switch_patches_the_trainers_model():
    """``model.lean_activations=true`` reaches the model every trainer loads."""
    from tether.config import LoRAConfig, ModelConfig
    from tether.trainers.common import load_trainable_model

    plain, _ = load_trainable_model(ModelConfig(name_or_path="tiny"), LoRAConfig(), seed=0)
    lean, _ = load_trainable_model(ModelConfig(name_or_path="tiny", lean_activations=True), LoRAConfig(enabled=True), seed=0)
    assert apply_lean_activations(plain) > 0  # the default leaves the model as transformers built it
    assert apply_lean_activations(lean) == 0  # already patched (under the LoRA wrapper too)
