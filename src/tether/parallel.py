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
from contextlib import nullcontext
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


def is_main() -> bool:
    """Whether this is the process that writes logs, checkpoints and the final model (rank 0)."""
    return world().is_main


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


# ---- device and precision ----------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where this process computes and in what precision. ``compute_dtype`` None: plain float32;
    bfloat16: autocast to bf16 around forward passes while the weights, their gradients and the
    optimiser state stay float32 (the master copy)."""

    device: torch.device = torch.device("cpu")
    compute_dtype: torch.dtype | None = None


_placement = Placement()


def resolve_placement(device: str = "auto", dtype: str = "auto", w: World | None = None) -> Placement:
    """``model.device`` / ``model.dtype`` -> a Placement. ``auto`` device: CUDA when present (the
    process's local rank's GPU under torchrun), else the CPU; ``cuda`` also means the local rank's
    GPU; ``cuda:N`` is taken as given. ``auto`` dtype: bf16 autocast on CUDA, float32 on the CPU."""
    w = w or world()
    requested = device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{w.local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device={requested!r} but torch sees no CUDA device (torch {torch.__version__}); use model.device=cpu or auto")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be auto, float32 or bfloat16, got {dtype!r}")
    if dtype == "bfloat16" and dev.type == "cpu":
        print("warning: model.dtype=bfloat16 on the CPU autocasts to bf16, which most CPUs run far slower than float32")
    return Placement(dev, torch.bfloat16 if dtype == "bfloat16" else None)


def set_placement(placement: Placement) -> None:
    """Make ``placement`` this process's (``load_trainable_model`` calls it for every command)."""
    global _placement
    _placement = placement
    if placement.device.type == "cuda":
        torch.cuda.set_device(placement.device)
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls outside autocast (the LM head's log-softmax stays float32)


def placement() -> Placement:
    return _placement


def device() -> torch.device:
    return _placement.device


def autocast():
    """bf16 autocast around a forward pass when the placement asks for it, else nothing."""
    p = _placement
    if p.compute_dtype is None:
        return nullcontext()
    return torch.autocast(p.device.type, dtype=p.compute_dtype)


# ---- data-parallel pieces the shared loops call --------------------------------------------------


def barrier() -> None:
    import torch.distributed as dist

    if world().distributed:
        dist.barrier()


def all_reduce_gradients(params: list[torch.nn.Parameter], bucket_bytes: int = 64 << 20) -> None:
    """Sum every parameter's gradient over the processes (data parallel, replicated weights).

    The loss each process backpropagates is already divided by the *global* normaliser, so the
    sum (not the mean) is the gradient of the global batch. Gradients are flattened into buckets
    of one dtype and device, one all_reduce per bucket, once per optimiser step (after the last
    micro-batch), so accumulation costs no communication. A parameter without a gradient on this
    process (unused in its share) takes part with zeros, so every process sends the same buckets;
    one without a gradient on any process keeps none (as in a single process: AdamW skips it).
    """
    import torch.distributed as dist

    if not world().distributed:
        return
    has_grad = global_sum(torch.tensor([float(p.grad is not None) for p in params], device=device()))  # [P]
    params = [p for p, n in zip(params, has_grad.tolist()) if n > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in params:
        if not buckets or size + p.grad.numel() * p.grad.element_size() > bucket_bytes or buckets[-1][0].grad.dtype != p.grad.dtype or buckets[-1][0].grad.device != p.grad.device:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.grad.numel() * p.grad.element_size()
    for bucket in buckets:
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # [Σ numel]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def sum_metrics(sums: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Sum each named value over the processes and bring them to the host: one all_reduce and one
    device-to-host copy for the whole dict, once per step (the loops keep per-micro-batch sums on
    the device, so nothing waits for the accelerator inside a step)."""
    if not sums:
        return {}
    names = sorted(sums)
    stacked = torch.stack([torch.as_tensor(sums[k], device=device()).detach().to(torch.float64) for k in names])  # [K]
    return dict(zip(names, global_sum(stacked).tolist()))


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` from process ``src`` on every process (identity in a world of one)."""
    import torch.distributed as dist

    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: T) -> list[T]:
    """Every process's ``obj`` in rank order (``[obj]`` in a world of one)."""
    import torch.distributed as dist

    w = world()
    if not w.distributed:
        return [obj]
    out: list = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


__all__ = [
    "Placement",
    "World",
    "all_reduce_gradients",
    "autocast",
    "barrier",
    "broadcast_object",
    "device",
    "gather_objects",
    "gather_rows",
    "global_sum",
    "init",
    "is_main",
    "placement",
    "resolve_placement",
    "set_placement",
    "shard",
    "sum_metrics",
    "world",
]
