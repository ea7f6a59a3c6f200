"""Checkpoints of a fully sharded (FSDP2) run: every process writes and reads its own shard.

Same directory layout and the same atomic protocol as ``common.Checkpointer`` (a temporary
directory renamed into place once complete, ``COMPLETE`` last, old ones pruned), with the weights
and the optimiser state as a ``torch.distributed.checkpoint`` (DCP) directory instead of one
safetensors file: no process ever holds the whole model. The step, schedule and RNG state are
the same on every process and are written once, by the main process, as ``state.pt``.
Loading never unpickles anything unchecked: ``state.pt`` with ``weights_only=True``, the DCP
directory through ``safe_dcp`` (its ``.metadata`` and non-tensor entries are pickles).
A sharded checkpoint resumes on the same number of processes (DCP can reshard on load, but tether
only tests the same count).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from tether import parallel
from tether.trainers.common import Checkpointer, load_state, restore_rng_state, rng_state

SHARDS = "sharded"


class ShardedCheckpointer(Checkpointer):
    collective = True  # every process calls save and load

    def save(self, step: int, model: torch.nn.Module, optimizer, scheduler, extra: dict[str, Any] | None = None) -> Path:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        w = parallel.world()
        final = self.root / f"step-{step:07d}"
        tmp = self.root / f".tmp-step-{step:07d}"  # one name for all processes (no pid)
        if w.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        parallel.barrier()
        model_state, optim_state = get_state_dict(model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDS))
        parallel.barrier()
        if w.is_main:
            state = {"step": step, "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rng_state(), "extra": extra or {}}
            torch.save(state, tmp / "state.pt")
            self._commit(tmp, final, step)
        parallel.barrier()
        return final

    def load(self, path: Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[int, dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

        from tether.trainers.safe_dcp import safe_load

        if not (path / SHARDS).is_dir():
            raise RuntimeError(f"checkpoint {path} holds no sharded state ({SHARDS}/); was it written by a run with train.distributed=ddp or one process?")
        options = StateDictOptions(ignore_frozen_params=True)
        model_state, optim_state = get_state_dict(model, optimizer, options=options)
        target = {"model": model_state, "optimizer": optim_state}
        safe_load(target, path / SHARDS)  # DCP's own reader would unpickle .metadata (and non-tensor entries) unchecked
        # Not strict: with frozen weights (LoRA's base) the state holds the trainable ones alone, and
        # the load above already refused a checkpoint lacking any key of ``target``.
        strict_off = StateDictOptions(ignore_frozen_params=True, strict=False)
        set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"], options=strict_off)
        state = load_state(path / "state.pt")  # weights_only: refuses a planted pickle
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        return state["step"], state["extra"]


__all__ = ["ShardedCheckpointer"]
