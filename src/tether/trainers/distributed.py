"""What the shared loops do differently when a run spans several processes (``torchrun``).

Every trainer goes through ``trainers.offline.fit`` or the online package, and those call the
few functions here; no trainer has a distributed code path of its own. In a world of one process
each of them is what the single-process code always did.

* Data parallel (``train.distributed: ddp``): every process holds the whole model, takes its share
  of each global batch (``parallel.shard``), divides its summed loss by the *global* normaliser and
  backpropagates; ``sync_gradients`` then sums the gradients over the processes once per optimiser
  step, so the step equals the one-process step on the same global batch.
* Fully sharded (``train.distributed: fsdp``, FSDP2 ``fully_shard``): each decoder layer is a
  shard unit and a ``Forwarder`` around the whole model is the root, so a trainer's forward pass
  (which calls the backbone and reads the LM head's weight itself, for chunked log-probabilities)
  runs inside the root's forward and every parameter is gathered while it is used. Reduce-scatter
  *sums* the gradients (the loss already carries the global normaliser). Checkpoints are sharded
  (torch.distributed.checkpoint: every process writes its own shard, nothing is gathered), and the
  final export gathers a full state dict once, into an unsharded copy on the main process.
* Online RL (PPO, GRPO, RLOO, Nash-MD, online DPO) shards the same way, PPO's policy, value head
  and critic as one root; generation (Nash-MD's mixture and reference replies too), the reference
  pass and the held-out evaluation run on a whole copy of the policy that every process refreshes
  from the shards before each rollout (``trainers.online.sharding``).
* Only the main process (rank 0) writes logs, non-sharded checkpoints and the final model; the
  others wait at a barrier where a file they will read is being written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tether import parallel


def check_mode(mode: str, batch: int, what: str) -> None:
    """Join the process group if torchrun started this process (a no-op otherwise, and when
    ``load_trainable_model`` already did), then refuse what a multi-process run cannot do, naming
    the key at fault."""
    w = parallel.init()
    if not w.distributed:
        return
    if batch < w.size:
        raise ValueError(f"{what}={batch} is smaller than the {w.size} processes; every process needs at least one example per step")
    if mode == "fsdp" and batch % w.size:
        raise ValueError(f"train.distributed=fsdp: {what}={batch} must be a multiple of the {w.size} processes (every process runs the same forward passes)")


class Forwarder(torch.nn.Module):
    """The FSDP2 root: ``forwarder(fn, *args)`` runs ``fn(model, *args)`` inside its forward, so the
    root's hooks gather the parameters outside the decoder layers (embeddings, final norm, LM
    head) before ``fn`` reads them and reduce-scatter their gradients after backward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args):
        return fn(self.model, *args)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a model: the members of every ModuleList whose members share a type."""
    layers = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            layers.extend(module)
    return layers


class Distributed:
    """How one model trains in this run: ``run(fn, *args)`` is ``fn(model, *args)`` (one process or
    data parallel) or goes through the FSDP2 root. ``lockstep``: every process must make the same
    forward passes (FSDP gathers parameters collectively inside them)."""

    def __init__(self, model: torch.nn.Module, mode: str):
        self.model, self.mode, self.root = model, mode, None
        self.sharded = parallel.world().distributed and mode == "fsdp"
        self.skeleton = None
        if self.sharded:
            self._shard()

    def _shard(self) -> None:
        import copy

        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

        if parallel.world().is_main:  # the shape of the unsharded model, for the final export (no memory until then)
            memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad) for p in self.model.parameters()}
            self.skeleton = copy.deepcopy(self.model, memo)  # the weights' data is not copied
        compute = parallel.placement().compute_dtype
        mp = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32) if compute is not None else MixedPrecisionPolicy()
        for layer in decoder_layers(self.model):
            fully_shard(layer, mp_policy=mp)
        self.root = fully_shard(Forwarder(self.model), mp_policy=mp)
        for module in self.root.modules():
            if isinstance(module, FSDPModule):
                # Sum, not mean: each process's loss is already divided by the global normaliser.
                # (A factor of 1 would ask for PREMUL_SUM, which gloo lacks; a forced SUM works on both.)
                divide = getattr(module, "set_gradient_divide_factor", None) or module.set_reduce_scatter_divide_factor  # older torch: the latter
                divide(1.0)
                if hasattr(module, "set_force_sum_reduction_for_comms"):  # newer torch; NCCL has PREMUL_SUM anyway
                    module.set_force_sum_reduction_for_comms(True)

    @property
    def lockstep(self) -> bool:
        return self.sharded

    def run(self, fn, *args):
        return self.root(fn, *args) if self.sharded else fn(self.model, *args)

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if not self.sharded:  # FSDP reduce-scattered them in backward already
            parallel.all_reduce_gradients(params)

    def full_model(self) -> torch.nn.Module | None:
        """The trained model, whole: the model itself unless sharded; else (a collective: every
        process must call it) the gathered weights loaded into an unsharded copy on the main
        process, and None elsewhere."""
        if not self.sharded:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not parallel.world().is_main:
            return None
        whole = self.skeleton  # its buffers are real copies; its parameters are on the meta device
        params = dict(whole.named_parameters(remove_duplicate=False))
        missing = [name for name in params if name not in full]
        if missing:
            raise RuntimeError(f"gathering the sharded model for export: no gathered weights for {missing[:5]}")
        for name, p in params.items():
            owner, _, attr = name.rpartition(".")
            setattr(whole.get_submodule(owner), attr, torch.nn.Parameter(full[name], requires_grad=p.requires_grad))
        whole.to("cpu")
        for module in whole.modules():  # the input and output embeddings of a tied model: one tensor again
            if hasattr(module, "tie_weights") and hasattr(module, "get_input_embeddings"):
                module.tie_weights()
        return whole


def sync_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum the step's gradients over the processes (data parallel); nothing in a world of one."""
    parallel.all_reduce_gradients(params)


def open_run_checkpoints(output_dir: str | Path, resume: bool, keep: int, sharded: bool = False):
    """``common.open_checkpoints`` on the main process (which alone may clear an earlier run), then
    the same answer on every process: (Checkpointer, the checkpoint to resume from or None).
    ``sharded``: a ``ShardedCheckpointer`` (FSDP)."""
    from tether.trainers.common import Checkpointer, open_checkpoints

    w = parallel.world()
    if not w.distributed:
        return open_checkpoints(output_dir, resume, keep)
    if w.is_main:
        checkpoints, latest = open_checkpoints(output_dir, resume, keep)
    parallel.barrier()
    if sharded:
        from tether.trainers.sharded_checkpoints import ShardedCheckpointer

        checkpoints = ShardedCheckpointer(output_dir, keep=keep)
    elif not w.is_main:
        checkpoints = Checkpointer(output_dir, keep=keep)
    name = parallel.broadcast_object(latest.name if w.is_main and latest is not None else None)
    return checkpoints, (checkpoints.root / name if name is not None else None)


def save_checkpoint(checkpoints, step: int, model, optimizer, scheduler, extra=None) -> None:
    """Data parallel: the main process writes (the weights and optimiser state are the same on
    every process) and the others wait until the checkpoint is complete. A ``ShardedCheckpointer``
    is called on every process (each writes its shard)."""
    if getattr(checkpoints, "collective", False) or parallel.world().is_main:
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


__all__ = ["Distributed", "Forwarder", "SilentLogger", "check_mode", "decoder_layers", "open_logger", "open_run_checkpoints", "save_checkpoint", "save_final_model", "sync_gradients"]
