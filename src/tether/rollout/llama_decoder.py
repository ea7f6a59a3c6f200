"""A decoder for Llama-style models over a static KV cache that tether allocates and owns.

Hugging Face's generic decode step pays, every token, for a growing ``DynamicCache`` (each layer
concatenates its keys and values, copying the whole history), a freshly built 4-D attention
mask, rotary tables recomputed from position ids and several layers of keyword plumbing. For a
small model on a CPU that overhead is larger than the arithmetic. Here:

* keys and values live in one pre-allocated tensor per layer, ``[B, Hkv, P + max_new, D]``;
  a step writes one column and attends over a view of the filled prefix;
* the key mask is one ``[B, P + max_new]`` bool tensor built at prefill (left padding False,
  everything after True); a step slices it, nothing is rebuilt;
* cos/sin come from the model's own rotary module once, for every position, then are indexed;
* each layer's projections are folded, once per decoder, into three weight matrices: q, k and v
  stacked into one ``[Hq*D + 2*Hkv*D, H]``, gate and up into one ``[2*I, H]``, and down. The
  effective weight of each projection is read by probing it with the identity matrix (it is
  affine: ``proj(I) - proj(0)`` is its weight, transposed; ``proj(0)`` its bias), so a
  LoRA-wrapped projection folds in its adapter (or leaves it out when the adapter is disabled)
  and a decode step runs 4 matrix products per layer instead of 7, or 21 with LoRA's extra two
  per projection. The cost is one copy of the layer weights while the decoder lives.
* on CPU those weights (and the LM head's) are handed to oneDNN once, reordered into its blocked
  layout for the decode batch size (see ``_Projection``).

Grouped-query attention without repeating keys: the G query heads that share a key/value head
are laid out as G query rows of that head, ``[B, Hkv, G * S, D]``, which is exactly how
``repeat_kv`` pairs them (query head h reads key head h // G).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# model_type values whose decoder layers compute exactly what this module does: pre-norm
# RMSNorm, q/k/v/o projections with rotary embeddings on q and k, causal softmax attention
# scaled by 1/sqrt(head_dim), a residual MLP, final norm, linear head.
SUPPORTED_MODEL_TYPES = ("llama",)
STATIC_ROPE_TYPES = ("default", "linear", "llama3")  # cos/sin depend on the position only

# On CPU a decode step multiplies [B, in] activations by every weight of the model, with B (the batch)
# small; MKL's general matmul reached 24-35 GFLOP/s on those shapes here and oneDNN's linear, given
# weights reordered once into its blocked layout for that B, 40-50 (this CPU's peak is about 67).
# Over SmolLM2's projections and head that took a batch-16 step's matrix time from 131 to 92 ms.
def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class _Projection:
    """``x [..., in] -> x W^T + b [..., out]``. On CPU with oneDNN the weight is held only in
    oneDNN's layout, packed for ``rows`` activation rows (any row count still works); elsewhere
    it is used as given, ``[out, in]``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int, packed: bool):
        self.bias = bias
        self.packed = packed
        # [out, in]; packing copies, so a plain layer's own weight is never modified
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), rows) if packed else weight.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def supports(model) -> bool:
    """True when the model is a Llama-style causal LM this decoder reproduces exactly."""
    from tether.models.forward import backbone_and_head

    try:
        backbone, _ = backbone_and_head(model)
    except (TypeError, NotImplementedError):
        return False
    config = backbone.config
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    return (
        getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES
        and rope in STATIC_ROPE_TYPES
        and hasattr(backbone, "layers")
        and hasattr(backbone, "rotary_emb")
        and getattr(config, "_attn_implementation", "sdpa") in ("sdpa", "eager")
    )


@dataclass
class _FoldedLayer:
    qkv: _Projection  # H -> Hq*D + 2*Hkv*D
    o: _Projection  # Hq*D -> H
    gate_up: _Projection  # H -> 2*I
    down: _Projection  # I -> H


def _lora_affine(module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W + Σ scale · B @ A, b) of a peft LoRA Linear, the sum peft's own merge computes, or None
    where that sum is not the layer's map (DoRA, an adapter bias, merged weights, not LoRA)."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        return None
    if not isinstance(module, LoraLinear) or module.merged:
        return None
    base = module.get_base_layer()
    if type(base) is not torch.nn.Linear:
        return None
    if module.disable_adapters:  # the reference pass: adapters off
        return base.weight, base.bias
    active = [a for a in module.active_adapters if a in module.lora_A]
    if any(module.use_dora.get(a, False) or getattr(module, "lora_bias", {}).get(a, False) for a in active):
        return None
    weight = base.weight  # [out, in]
    for adapter in active:
        weight = weight + module.get_delta_weight(adapter).to(weight.dtype)  # [out, in]
    return weight, base.bias


def _affine(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias [out] or None) of a projection that maps x to x W^T + b, whatever wraps it."""
    if isinstance(module, torch.nn.Linear) and type(module) is torch.nn.Linear:
        return module.weight, module.bias  # a plain layer: no copy
    # A LoRA layer folds as W + scale·B@A (out·r·in multiply-adds); probing it with an identity
    # matrix, the generic way below, costs in·in·out, about a long prefill's worth per rollout.
    lora = _lora_affine(module)
    if lora is not None:
        return lora
    weight = next(p for p in module.parameters())
    fan_in = module.in_features if hasattr(module, "in_features") else module.base_layer.in_features
    probe = torch.eye(fan_in, device=weight.device, dtype=weight.dtype)  # [in, in]
    was_training = module.training
    module.eval()  # adapter dropout off, as during generation
    try:
        bias = module(torch.zeros(1, fan_in, device=weight.device, dtype=weight.dtype))[0]  # [out]
        folded = (module(probe) - bias).t().contiguous()  # [out, in]
    finally:
        module.train(was_training)
    return folded, (bias if bool(bias.any()) else None)


def _stack(parts: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([w for w, _ in parts])
    if all(b is None for _, b in parts):
        return weight, None
    return weight, torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in parts])


def _fold_layer(layer, rows: int, packed: bool) -> _FoldedLayer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _stack([_affine(attn.q_proj), _affine(attn.k_proj), _affine(attn.v_proj)])
    gate_up = _stack([_affine(mlp.gate_proj), _affine(mlp.up_proj)])
    project = lambda weight_and_bias: _Projection(*weight_and_bias, rows, packed)  # noqa: E731
    return _FoldedLayer(project(qkv), project(_affine(attn.o_proj)), project(gate_up), project(_affine(mlp.down_proj)))


class LlamaStaticDecoder:
    """``prefill(ids, mask, positions) -> logits [B, V]`` then ``step(tokens, positions, slot) -> logits [B, V]``."""

    def __init__(self, model, batch_size: int, max_length: int):
        from tether.models.forward import backbone_and_head

        self.backbone, self.head = backbone_and_head(model)
        config = self.backbone.config
        self.layers = list(self.backbone.layers)[: config.num_hidden_layers]
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.groups = self.num_heads // self.num_kv_heads
        self.eps = [(layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon) for layer in self.layers]
        weight = self.head.weight
        device, dtype = weight.device, self.backbone.embed_tokens.weight.dtype
        shape = (batch_size, self.num_kv_heads, max_length, self.head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in self.layers]  # L x [B, Hkv, T, D]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in self.layers]  # L x [B, Hkv, T, D]
        self.key_mask = torch.ones(batch_size, max_length, dtype=torch.bool, device=device)  # [B, T]
        # The same mask as additive biases (0 / -inf): SDPA would convert a bool mask in every layer.
        self.key_bias = torch.zeros(batch_size, max_length, dtype=dtype, device=device)  # [B, T]
        self.max_length = max_length
        self.cos = self.sin = None  # [max_pos, D], filled at prefill once the largest position is known
        packed = device.type == "cpu" and dtype == torch.float32 and _onednn_linear_available()
        with torch.no_grad():
            self.fused = [_fold_layer(layer, batch_size, packed) for layer in self.layers]
            self.logits_of = _Projection(weight, self.head.bias, batch_size, packed)  # [B, H] -> [B, V]
        self.act = F.silu if getattr(config, "hidden_act", None) == "silu" else None  # None: the MLP's own act_fn

    def _rope_tables(self, largest_position: int) -> None:
        positions = torch.arange(largest_position + 1, device=self.key_mask.device)[None]  # [1, N]
        probe = self.backbone.embed_tokens.weight[:1]  # dtype and device only
        cos, sin = self.backbone.rotary_emb(probe, positions)  # [1, N, D] each
        half = self.head_dim // 2
        # rotate_half(x) = cat(-x2, x1) = roll(x, half) * [-1..., +1...]: fold the sign into sin.
        self.cos, self.sin = cos[0], torch.cat((-sin[0, :, :half], sin[0, :, half:]), dim=-1)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """x * cos + rotate_half(x) * sin, in three ops instead of five."""
        return torch.addcmul(x * cos, x.roll(self.head_dim // 2, dims=-1), signed_sin)

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor) -> torch.Tensor:
        """Run S new tokens per row that occupy cache columns [start, start + S).

        input_ids, positions: [B, S]; mask: [B, 1, G*S or 1, start + S] additive (0 = may attend, -inf = may not).
        Returns the final-normed hidden state of the last new token, [B, H].
        """
        batch, new = input_ids.shape
        end = start + new
        heads, kv_heads, dim, groups = self.num_heads, self.num_kv_heads, self.head_dim, self.groups
        cos = self.cos[positions][:, None]  # [B, 1, S, D]
        sin = self.sin[positions][:, None]  # [B, 1, S, D]
        x = self.backbone.embed_tokens(input_ids)  # [B, S, H]
        q_width, kv_width = heads * dim, kv_heads * dim
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            w = self.fused[i]
            h = F.rms_norm(x, x.shape[-1:], layer.input_layernorm.weight, self.eps[i][0])  # [B, S, H]
            qkv = w.qkv(h)  # [B, S, Hq*D + 2*Hkv*D]
            q, k, v = qkv.split((q_width, kv_width, kv_width), dim=-1)
            q = q.view(batch, new, heads, dim).transpose(1, 2)  # [B, Hq, S, D]
            k = k.view(batch, new, kv_heads, dim).transpose(1, 2)  # [B, Hkv, S, D]
            v = v.view(batch, new, kv_heads, dim).transpose(1, 2)  # [B, Hkv, S, D]
            self.keys[i][:, :, start:end] = self._rope(k, cos, sin)
            self.values[i][:, :, start:end] = v
            q = self._rope(q, cos, sin).reshape(batch, kv_heads, groups * new, dim)  # [B, Hkv, G*S, D]
            out = F.scaled_dot_product_attention(
                q, self.keys[i][:, :, :end], self.values[i][:, :, :end], attn_mask=mask, scale=attn.scaling
            )  # [B, Hkv, G*S, D]
            out = out.view(batch, heads, new, dim).transpose(1, 2).reshape(batch, new, heads * dim)  # [B, S, Hq*D]
            x = x + w.o(out)
            h = F.rms_norm(x, x.shape[-1:], layer.post_attention_layernorm.weight, self.eps[i][1])  # [B, S, H]
            gate, up = w.gate_up(h).chunk(2, dim=-1)  # [B, S, I] each
            act = self.act(gate) if self.act is not None else layer.mlp.act_fn(gate)
            x = x + w.down(act * up)
        last = x[:, -1]  # [B, H]
        norm = self.backbone.norm
        return F.rms_norm(last, last.shape[-1:], norm.weight, norm.variance_epsilon)  # [B, H]

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Left-padded prompts [B, P] -> logits of the next token [B, V]."""
        batch, width = input_ids.shape
        self._rope_tables(int(position_ids.max()) + self.max_length - width)
        self.key_mask[:, :width] = attention_mask.bool()
        self.key_bias.masked_fill_(~self.key_mask, float("-inf"))
        causal = torch.ones(width, width, dtype=torch.bool, device=input_ids.device).tril_()  # [P, P]
        # Left-pad queries see no real key; letting every query see itself keeps their rows finite
        # (an all-masked softmax is NaN, and NaN values would leak through zero attention weights).
        mask = (causal & self.key_mask[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=input_ids.device)  # [B, P, P]
        mask = mask[:, None, None].expand(batch, 1, self.groups, width, width).reshape(batch, 1, self.groups * width, width)
        mask = torch.zeros(mask.shape, dtype=self.key_bias.dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        return self.logits_of(self._forward(input_ids, position_ids, 0, mask))

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """tokens [B], positions [B], slot = the cache column they occupy -> logits [B, V]."""
        mask = self.key_bias[:, None, None, : slot + 1]  # [B, 1, 1, slot + 1], broadcast over the G query rows
        return self.logits_of(self._forward(tokens[:, None], positions[:, None], slot, mask))


__all__ = ["LlamaStaticDecoder", "SUPPORTED_MODEL_TYPES", "supports"]
