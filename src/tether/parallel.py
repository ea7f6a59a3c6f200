"""Processes of one run: rank, world size, and the few collective operations trainers need.

Under ``torchrun`` every process runs the same trainer. Everything a trainer needs to know about
the other processes goes through this module, so no trainer grows a distributed code path of its
own, and losses never see a rank: they take their normaliser (the total real tokens or sequences
of the global batch) as an argument, and that total is what ``global_sum`` computes here.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) this is a world of one process and
every function below is the identity, with no ``torch.distributed`` call at all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current process's place, from the initialised process group, else from torchrun's
    environment variables (before ``init``), else a world of one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(backend: str | None = None) -> World:
    """Join the process group torchrun set up (``nccl`` on CUDA, else ``gloo``); a no-op in a
    world of one. Safe to call twice."""
    import torch.distributed as dist

    w = world()
    if w.size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(w.local_rank)
        w = world()
    return w


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over all processes (a new tensor; the input is left alone). This is the
    global normaliser of a loss: e.g. the real tokens of the whole batch across ranks."""
    import torch.distributed as dist

    total = value.detach().clone()
    if world().distributed:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def gather_rows(value: torch.Tensor) -> torch.Tensor:
    """Concatenate each process's ``value`` [n_r, ...] along dim 0 in rank order -> [Σ n_r, ...].
    Rows may differ in number between processes (sizes are exchanged first)."""
    import torch.distributed as dist

    w = world()
    if not w.distributed:
        return value
    count = torch.tensor([value.shape[0]], device=value.device)
    counts = [torch.zeros_like(count) for _ in range(w.size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = value.new_zeros((longest, *value.shape[1:]))  # all_gather needs equal shapes
    padded[: value.shape[0]] = value
    pieces = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[: int(c.item())] for piece, c in zip(pieces, counts)])


def shard(items: list[T], w: World | None = None) -> list[T]:
    """This process's share of ``items``: every size-th item starting at its rank, so shares differ
    in length by at most one and concatenating them by rank-interleaving restores the order."""
    w = w or world()
    return items[w.rank :: w.size]


__all__ = ["World", "gather_rows", "global_sum", "init", "shard", "world"]
