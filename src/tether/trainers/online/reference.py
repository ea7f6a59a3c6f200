"""The reference policy of online RL, and whether a run needs one (moved unchanged from trainers/online.py)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from tether.trainers.online.batch import ResponseBatch, response_hidden, response_logprobs
from tether.trainers.online.config import KLConfig


class Reference:
    """Per-token reference log-probabilities: the policy with adapters off, or a frozen copy."""

    def __init__(self, mode: str, model, lora_enabled: bool):
        if mode == "auto":
            mode = "adapter" if lora_enabled else "copy"
        if mode == "adapter" and not lora_enabled:
            raise ValueError("kl.reference=adapter needs lora.enabled=true (the reference is the model with its adapters off)")
        self.mode = mode
        self.frozen = None
        if mode == "copy":
            import copy

            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, model, batch: ResponseBatch, temperature: float, chunk_size: int) -> torch.Tensor:
        from tether.models import disabled_adapter

        target = self.frozen if self.frozen is not None else model
        was_training = model.training
        model.eval()
        with disabled_adapter(model) if self.frozen is None else nullcontext():
            lp, _ = response_logprobs(target, response_hidden(target, batch), batch, temperature, chunk_size)  # [B, Tr]
        model.train(was_training)
        return lp


def uses_reference(cfg: KLConfig) -> bool:
    """Whether the KL penalty can ever be nonzero. A fixed β = 0 never needs the reference, so none
    is built (no frozen copy) or run (no reference forward pass), and the KL to it goes unlogged."""
    return cfg.adaptive or cfg.coef != 0.0


__all__ = ["Reference", "uses_reference"]
