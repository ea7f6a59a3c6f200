"""Leaner activations for training: the same numbers, fewer tensors kept for backward.

Autograd keeps every intermediate an op needs for its gradient. In a Llama block two cheap
elementwise stretches keep far more than they need:

- the MLP's ``silu(gate) * up`` keeps ``silu(gate)`` beside ``gate`` and ``up``; the
  ``SiluTimesUp`` Function keeps only ``gate`` and ``up`` and recomputes the sigmoid in backward,
  one ``[tokens, intermediate]`` tensor less per layer;
- ``LlamaRMSNorm`` keeps its float32 input and its normalised (pre-weight) output; the
  ``RMSNormWithWeight`` Function keeps only the input (in its own dtype) and the per-row inverse
  RMS, one ``[tokens, hidden]`` tensor less per norm in float32 (and a float32 copy less in bf16).

``apply_lean_activations(model)`` swaps the forward of those modules, nothing else: the Linear
layers (and any LoRA adapters on them) are untouched, the state dict is unchanged, and with
gradients off the patched forwards compute directly, as the originals do.

Pure torch: any device, any float dtype. Importing this module imports torch only.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


class SiluTimesUp(torch.autograd.Function):
    """``silu(gate) * up`` that saves ``gate`` and ``up`` and recomputes ``silu(gate)`` in backward.

    Forward is the same expression as ``LlamaMLP`` (``F.silu`` then a multiply, in the inputs'
    dtype); backward uses the same ``silu_backward`` kernel autograd would, so the gradients match
    the unpatched model's bit for bit in practice.
    """

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)  # [..., intermediate] each
        return F.silu(gate) * up  # [..., intermediate]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_gate = grad_up = None
        if ctx.needs_input_grad[0]:
            # d/dgate silu(gate) * up: the incoming gradient of silu's output is grad_out * up,
            # rounded to the activation dtype as autograd's multiply backward does.
            grad_silu = (grad_out * up).to(gate.dtype)  # [..., intermediate]
            grad_gate = torch.ops.aten.silu_backward(grad_silu, gate).sum_to_size(gate.shape)
        if ctx.needs_input_grad[1]:
            grad_up = (grad_out * F.silu(gate)).sum_to_size(up.shape)  # recomputed, never stored
        return grad_gate, grad_up


def _norm_dtype(x: torch.Tensor) -> torch.dtype:
    """float32, as transformers normalises in, except that float64 stays float64.

    transformers would round a float64 input to float32; keeping float64 changes nothing for the
    dtypes models train in (bf16, fp16, fp32) and lets ``gradcheck`` verify the backward.
    """
    return torch.promote_types(x.dtype, torch.float32)


class RMSNormWithWeight(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x**2) + eps))`` with the norm in float32, as ``LlamaRMSNorm``.

    (float64 inputs are normalised in float64; see ``_norm_dtype``.)

    Saves the input in its own dtype and the per-row inverse RMS (``[..., 1]``, float32);
    backward recomputes the normalised input from them. The forward casts exactly where
    transformers does: upcast to float32, normalise, cast back to the input dtype, then multiply
    by the weight (so a float32 weight on a bf16 input gives a float32 output, as there).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.to(_norm_dtype(x))  # [..., hidden]; the same tensor when x is already float32
        inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1]
        ctx.save_for_backward(x, weight, inv_rms)
        return weight * (x32 * inv_rms).to(x.dtype)  # [..., hidden]

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, inv_rms = ctx.saved_tensors
        x32 = x.to(inv_rms.dtype)  # [..., hidden]
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            normalized = (x32 * inv_rms).to(x.dtype)  # [..., hidden], recomputed
            grad_weight = (grad_out * normalized).sum_to_size(weight.shape).to(weight.dtype)  # [hidden]
        if ctx.needs_input_grad[0]:
            # Autograd hands the normalised tensor a gradient in its own (input) dtype, then the
            # cast back to float32; round the same way so bf16 gradients agree with the original.
            grad_normalized = (grad_out * weight).to(x.dtype).to(x32.dtype)  # [..., hidden]
            # y = x * r, r = (mean(x^2) + eps)^(-1/2), g = dL/dy:  dL/dx = r * g - x * r^3 * mean(g * x)
            mean_grad_dot_x = (grad_normalized * x32).mean(-1, keepdim=True)  # [..., 1]
            grad_x32 = grad_normalized * inv_rms - x32 * (inv_rms.pow(3) * mean_grad_dot_x)  # [..., hidden]
            grad_x = grad_x32.to(x.dtype)
        return grad_x, grad_weight, None


def silu_times_up(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up``; through ``SiluTimesUp`` only when a gradient will flow."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SiluTimesUp.apply(gate, up)
    return F.silu(gate) * up  # no graph to keep, so the plain expression costs nothing extra


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``'s computation; through ``RMSNormWithWeight`` only when a gradient will flow."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return RMSNormWithWeight.apply(x, weight, eps)
    x32 = x.to(_norm_dtype(x))
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _lean_mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    gate = self.gate_proj(x)  # [..., intermediate]; gate before up, as the original, so LoRA dropout draws alike
    up = self.up_proj(x)  # [..., intermediate]
    return self.down_proj(silu_times_up(gate, up))  # [..., hidden]


def _lean_rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def _same_code(function_a, function_b) -> bool:
    """True when two functions run the same bytecode on the same names and constants.

    transformers copies ``LlamaMLP``/``LlamaRMSNorm`` verbatim into many architectures (Mistral,
    Qwen2, SmolLM3, ...); comparing code accepts those copies and refuses look-alikes that compute
    something else (Gemma's ``1 + weight``, OLMo2's cast after the weight, a hub kernel's forward).
    """
    code_a = getattr(function_a, "__code__", None)
    code_b = getattr(function_b, "__code__", None)
    if code_a is None or code_b is None:
        return False
    return (code_a.co_code, code_a.co_names, code_a.co_consts) == (code_b.co_code, code_b.co_names, code_b.co_consts)


def _is_silu(act_fn) -> bool:
    return isinstance(act_fn, torch.nn.SiLU) or type(act_fn).__name__ == "SiLUActivation"


def _is_llama_mlp(module, reference_forward) -> bool:
    if not all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return False
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        return False
    return _is_silu(module.act_fn) and _same_code(type(module).forward, reference_forward)


def _is_llama_rms_norm(module, reference_forward) -> bool:
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(getattr(module, "weight", None), torch.Tensor)
        and isinstance(getattr(module, "variance_epsilon", None), float)
        and _same_code(type(module).forward, reference_forward)
    )


def _lean_forward_of(module):
    """The lean forward function now bound to ``module``, or None."""
    bound = module.__dict__.get("forward")
    function = getattr(bound, "__func__", None)
    return function if function in (_lean_mlp_forward, _lean_rms_norm_forward) else None


def apply_lean_activations(model) -> int:
    """Swap the forward of every Llama-style SiLU MLP and RMSNorm in ``model`` for the lean one.

    Works on a plain transformers model or a PEFT-wrapped one (the Linear layers, adapters
    included, are called as before; only the elementwise parts change). The new forward is an
    instance attribute, so the state dict, ``save_pretrained`` output and ``deepcopy`` are as
    before, and ``remove_lean_activations`` restores the class forward. Modules of other
    architectures are left alone.

    Returns how many modules this call changed: 0 for an unknown architecture or a model already
    patched (calling twice is harmless).
    """
    try:
        from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
    except ImportError:  # without transformers' Llama there is no reference to recognise modules by
        return 0
    changed = 0
    for module in model.modules():
        if _lean_forward_of(module) is not None or "forward" in module.__dict__:
            continue  # already lean, or someone else (accelerate hooks, kernels) owns this forward
        if _is_llama_mlp(module, LlamaMLP.forward):
            module.forward = types.MethodType(_lean_mlp_forward, module)
        elif _is_llama_rms_norm(module, LlamaRMSNorm.forward):
            module.forward = types.MethodType(_lean_rms_norm_forward, module)
        else:
            continue
        changed += 1
    return changed


def remove_lean_activations(model) -> int:
    """Undo ``apply_lean_activations``: the class forwards come back. Returns how many modules changed."""
    restored = 0
    for module in model.modules():
        if _lean_forward_of(module) is not None:
            del module.forward
            restored += 1
    return restored


class SavedTensorMeter:
    """Within the block, measure what autograd saves for backward.

    ``activation_bytes`` counts each distinct storage once (two ops saving the same tensor share
    it), leaving out the storages of ``ignore`` (pass the model's parameters: a Linear saves its
    weight, which costs no extra memory). ``packed_bytes`` sums every save, shared or not. Saved
    tensors are referenced here until the meter is dropped, as the graph would keep them anyway.
    """

    def __init__(self, ignore=()):
        self._ignored = {tensor.untyped_storage().data_ptr() for tensor in ignore}
        self._storages: dict[int, int] = {}  # data_ptr -> nbytes of each distinct saved storage
        self._alive: list[torch.Tensor] = []  # keeps data_ptrs unique while we count
        self.packed_bytes = 0
        self.saves = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.saves += 1
        self.packed_bytes += tensor.numel() * tensor.element_size()
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._ignored:
            self._storages[storage.data_ptr()] = storage.nbytes()
            self._alive.append(tensor)
        return tensor

    @property
    def activation_bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        return self._hooks.__exit__(*exc)
