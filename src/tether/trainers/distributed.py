"""What the shared loops do differently when a run spans several processes (``torchrun``).

Every trainer goes through ``trainers.offline.fit`` or the online package, and those call the
few functions here; no trainer has a distributed code path of its own. In a world of one process
each of them is what the single-process code always did.

* Data parallel (``train.distributed: ddp``): every process holds the whole model, takes its share
  of each global batch (``parallel.shard``), divides its summed loss by the *global* normaliser and
  backpropagates; ``sync_gradients`` then sums the gradients over the processes once per optimiser
  step, so the step equals the one-process step on the same global batch.
* Only the main process (rank 0) writes logs, checkpoints and the final model; the others wait
  at a barrier where a file they will read is being written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tether import parallel


def check_mode(mode: str, batch: int, what: str) -> None:
    """Refuse what a multi-process run cannot do, naming the key at fault."""
    w = parallel.world()
    if not w.distributed:
        return
    if mode == "fsdp":
        raise NotImplementedError(
            "train.distributed=fsdp is not implemented yet: tether's forward passes call the backbone and read the LM head's "
            "weight directly (chunked log-probs), which FSDP2's root hooks do not see; use train.distributed=ddp"
        )
    if batch < w.size:
        raise ValueError(f"{what}={batch} is smaller than the {w.size} processes; every process needs at least one example per step")


def sync_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the step's gradients over the processes (data parallel); nothing in a world of one."""
    parallel.all_reduce_gradients(params)


def open_run_checkpoints(output_dir: str | Path, resume: bool, keep: int):
    """``common.open_checkpoints`` on the main process (which alone may clear an earlier run), then
    the same answer on every process: (Checkpointer, the checkpoint to resume from or None)."""
    from tether.trainers.common import Checkpointer, open_checkpoints

    w = parallel.world()
    if not w.distributed:
        return open_checkpoints(output_dir, resume, keep)
    if w.is_main:
        checkpoints, latest = open_checkpoints(output_dir, resume, keep)
    parallel.barrier()
    if not w.is_main:
        checkpoints = Checkpointer(output_dir, keep=keep)
        latest = checkpoints.latest() if resume else None
    name = parallel.broadcast_object(latest.name if latest is not None else None)
    return checkpoints, (checkpoints.root / name if name is not None else None)


def save_checkpoint(checkpoints, step: int, model, optimizer, scheduler, extra=None) -> None:
    """The main process writes (the weights and optimiser state are the same on every process
    under data parallelism); the others wait until the checkpoint is complete."""
    if parallel.world().is_main:
        checkpoints.save(step, model, optimizer, scheduler, extra)
    parallel.barrier()


class SilentLogger:
    """What a non-main process logs: nothing (the main process writes metrics and progress)."""

    history: dict = {}

    def log(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass

    def print(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self, *args, **kwargs) -> None:
        pass


def open_logger(output_dir, total_steps: int, start_step: int, progress: bool, title: str):
    from tether.trainers.common import RunLogger

    if parallel.world().is_main:
        return RunLogger(output_dir, total_steps, start_step, progress=progress, title=title)
    return SilentLogger()


def save_final_model(save, *args, **kwargs):
    """Run ``save(*args, **kwargs)`` (a model export) on the main process only; all wait for it."""
    out = save(*args, **kwargs) if parallel.world().is_main else None
    parallel.barrier()
    return out


__all__ = ["SilentLogger", "check_mode", "open_logger", "open_run_checkpoints", "save_checkpoint", "save_final_model", "sync_gradients"]
