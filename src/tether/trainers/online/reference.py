"""The reference policy of online RL (the shared ``trainers.reference.Reference`` over sampled
responses), and whether a run needs one."""

from __future__ import annotations

import torch

from tether.trainers.online.batch import ResponseBatch, policy_logprobs
from tether.trainers.online.config import KLConfig
from tether.trainers.reference import Reference as SharedReference


class Reference(SharedReference):
    """Per-token reference log-probabilities of sampled responses; the policy (mode, copy or
    adapters off, and what ``auto`` means) is ``tether.trainers.reference.Reference``'s."""

    def __init__(self, mode: str, model, lora_enabled: bool):
        super().__init__(mode, model, lora_enabled, fresh_samples=True)

    @torch.no_grad()
    def logprobs(self, model, batch: ResponseBatch, temperature: float, chunk_size: int) -> torch.Tensor:
        with self.network(model) as net:
            lp, _ = policy_logprobs(net, batch, temperature, chunk_size)  # [B, Tr]
        return lp


def uses_reference(cfg: KLConfig) -> bool:
    """Whether the KL penalty can ever be nonzero. A fixed β = 0 never needs the reference, so none
    is built (no frozen copy) or run (no reference forward pass), and the KL to it goes unlogged."""
    return cfg.adaptive or cfg.coef != 0.0


__all__ = ["Reference", "uses_reference"]
