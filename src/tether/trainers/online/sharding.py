"""The policy of an online run under ``train.distributed=fsdp`` (FSDP2 ``fully_shard``), and the
whole copy of it that samples.

Training is sharded as in the offline loop (``trainers.distributed.Distributed``): every decoder
layer is a shard unit, the ``Forwarder`` root gathers the rest, gradients are reduce-scattered
(summed) and AdamW's state is sharded. Generation is not, for two reasons:

* decoding runs a data-dependent number of steps on each process (a process stops when its own
  replies end), while FSDP's forward hooks all-gather and free every layer's weights inside each
  forward pass; those are collectives, so processes decoding different numbers of tokens would
  wait for each other forever (and one all-gather per layer per token is slower than decoding);
* the rollout engine (a static KV cache, a Llama decoder reading the weights directly) expects
  plain tensors, not DTensor shards.

So each process keeps a *sampler*: an unsharded copy of the policy made before sharding, whose
trainable weights are refreshed from the shards (one ``full_tensor`` all-gather per trainable
parameter, all processes in the same order) before every rollout, before the held-out evaluation
and before the export. Frozen weights (the base model under LoRA) never change, so they are
copied once, at the start. The sampler then decodes on each process independently, runs the
reference pass (its adapters off, or the frozen copy) and is the consolidated model written at
the end. Memory: the sampler holds the whole weights on every process, as any decoder must while
it decodes; what FSDP saves is the gradients and the optimiser state (and the trained weights'
master copy), which are sharded.
"""

from __future__ import annotations

import copy

import torch

from tether import parallel


class PolicyShards:
    """``policy`` as this run trains it, inside ``trained``: the module the run trains and
    checkpoints (the policy itself, or PPO's policy + value head + critic), sharded as one FSDP
    root. ``run(fn, *args)``: ``fn(trained, *args)``, through the root when sharded. ``sampler``:
    the policy, whole, that generates, scores the reference and is exported (the policy itself
    unless sharded). ``checkpointed``: what checkpoints hold (the root, when sharded)."""

    def __init__(self, policy: torch.nn.Module, mode: str, trained: torch.nn.Module | None = None):
        from tether.trainers.distributed import Distributed

        self.policy = policy
        self.trained = policy if trained is None else trained
        self.sharded = parallel.world().distributed and mode == "fsdp"
        self.sampler = copy.deepcopy(policy) if self.sharded else policy  # before fully_shard turns the weights into shards
        self.dist = Distributed(self.trained, mode)  # shards ``trained`` in place (before the optimiser sees its parameters)
        self.checkpointed = self.dist.root if self.sharded else self.trained

    def whole(self) -> torch.nn.Module | None:
        """``trained`` with whole weights, for the export: itself unless sharded; else (a
        collective) the gathered copy on the main process and None elsewhere."""
        return self.dist.full_model()

    def run(self, fn, *args):
        return self.dist.run(fn, *args)

    @torch.no_grad()
    def sync_sampler(self) -> None:
        """Copy the trained weights into the sampler (a collective under FSDP: every process calls
        it at the same point; nothing otherwise)."""
        if not self.sharded:
            return
        replica = dict(self.sampler.named_parameters())
        for name, p in self.policy.named_parameters():
            if p.requires_grad:  # frozen weights are the sampler's since the copy
                whole = p.full_tensor() if hasattr(p, "full_tensor") else p  # [same shape as the unsharded weight]
                replica[name].copy_(whole)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        self.dist.sync_gradients(params)


__all__ = ["PolicyShards"]
