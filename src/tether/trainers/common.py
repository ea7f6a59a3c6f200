"""Pieces every training loop uses: seeding, optimizer and schedule, data order, checkpoints, logs.

Nothing here knows an algorithm. A loop composes these pieces explicitly.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tether.trainers.progress import Progress, print_clean, warning_markup


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN or infinite: training on would only corrupt the weights."""


def ensure_finite(value: torch.Tensor | float, step: int, name: str = "loss") -> None:
    v = float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(
            f"{name} became {v} at step {step}; stopping instead of training on. "
            "Common causes: a learning rate too high (try a lower train.lr), empty or corrupt examples, "
            "or fp16 overflow. The last good checkpoint is untouched."
        )


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional at this level
        pass


def configure_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def build_optimizer(params: torch.nn.Module | list[dict], cfg) -> torch.optim.AdamW:
    """AdamW for every trainer, offline and online; biases and norm weights (1-D) get no weight decay.

    ``params``: a module (all its trainable parameters, at ``cfg.lr``) or parameter groups
    ``{"params": [...], "lr": optional}`` (PPO gives its value head a learning rate of its own);
    parameters that do not require grad are left out. ``cfg``: any training section with ``lr``,
    ``weight_decay`` and ``adam_betas`` (``TrainConfig``, ``OnlineTrainConfig``).
    """
    given = [{"params": list(trainable_parameters(params).values())}] if isinstance(params, torch.nn.Module) else params
    groups = []
    for group in given:
        trainable = [p for p in group["params"] if p.requires_grad]
        lr = group.get("lr", cfg.lr)
        groups.append({"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr})
        groups.append({"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0, "lr": lr})
    # The fused kernel updates each tensor in one pass; torch's default on CPU is a per-op loop that
    # reads and writes the parameters and both moments several times (about 0.3 s a step at 135M).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.adam_betas), fused=fused or None)


def warmup_cosine(total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Learning-rate multiplier: linear warm-up from ~0, then cosine decay to ``min_lr_ratio``."""
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine decay over ``total_steps`` scheduler steps (offline: optimizer steps;
    online: one per RL step); ``cfg`` has ``warmup_ratio`` and ``min_lr_ratio``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, cfg.warmup_ratio, cfg.min_lr_ratio))


class StepPlan:
    """Which examples each optimizer step sees, fixed by the seed so a resumed run sees the same.

    Epochs are independent permutations (seeded by ``seed + epoch``) laid end to end; step s takes
    the s-th window of ``batch_size`` from that stream, so a batch may straddle two epochs.
    """

    def __init__(self, num_examples: int, batch_size: int, epochs: float, max_steps: int | None, seed: int):
        if num_examples == 0:
            raise ValueError("no training examples left after loading and filtering the data")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.total_steps = max_steps if max_steps is not None else max(1, math.ceil(epochs * num_examples / batch_size))
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._perm((start + j) // self.n)[(start + j) % self.n] for j in range(self.batch_size)]

    def epoch_at(self, step: int) -> float:
        return step * self.batch_size / self.n


def micro_batches(indices: list[int], micro_batch_size: int, lengths: list[int] | None = None) -> Iterator[list[int]]:
    """Split a step's examples into micro-batches; sorting by length first keeps padding low."""
    order = sorted(indices, key=lambda i: lengths[i]) if lengths is not None else list(indices)
    for start in range(0, len(order), micro_batch_size):
        yield order[start : start + micro_batch_size]


def rng_state() -> dict[str, Any]:
    """Every RNG's state in types ``torch.load(weights_only=True)`` reads: no pickled objects."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:
        pass
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint's state file holds something other than tensors and plain values."""


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.pt``, read with ``weights_only=True``: tensors, numbers, strings and
    containers only. A file holding any other object (a pickle that could run code when loaded) is
    refused without being executed."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refusing to resume from {path}: it holds objects other than tensors and plain values, and loading them "
            f"could run code (tether writes no such state; was the checkpoint made elsewhere?). torch said: {str(e).splitlines()[0]}"
        ) from None


class Checkpointer:
    """Atomic checkpoints under ``<output_dir>/checkpoints/step-NNNNNNN``.

    A checkpoint is written into a temporary directory and renamed into place only when every
    file is on disk, so a crash mid-write leaves the previous checkpoints intact and no partial
    one that ``latest()`` could pick up. Only trainable parameters are stored (all weights for a
    full fine-tune, the adapters and heads for LoRA), with the optimizer, schedule, RNG and any
    extra loop state needed to continue exactly.
    """

    def __init__(self, output_dir: str | Path, keep: int = 2):
        self.root = Path(output_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        if not self.root.exists():
            return None
        done = sorted(p for p in self.root.glob("step-*") if (p / "COMPLETE").exists())
        return done[-1] if done else None

    def save(self, step: int, model: torch.nn.Module, optimizer, scheduler, extra: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{step:07d}"
        tmp = self.root / f".tmp-step-{step:07d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        weights = {name: p.detach().contiguous() for name, p in trainable_parameters(model).items()}
        save_file(weights, str(tmp / "trainable.safetensors"))
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": extra or {},
        }
        torch.save(state, tmp / "state.pt")
        self._commit(tmp, final, step)
        return final

    def _commit(self, tmp: Path, final: Path, step: int) -> None:
        """Mark ``tmp`` complete, flush every file in it, and rename it to ``final`` in one step: a
        checkpoint is either whole under its final name or absent."""
        (tmp / "COMPLETE").write_text(str(step))
        for f in tmp.rglob("*"):  # flush file contents before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._prune()

    def _prune(self) -> None:
        done = sorted(p for p in self.root.glob("step-*") if (p / "COMPLETE").exists())
        for old in done[: max(0, len(done) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):  # left by a killed writer
            shutil.rmtree(stale, ignore_errors=True)

    def load(self, path: Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[int, dict[str, Any]]:
        from safetensors.torch import load_file

        weights = load_file(str(path / "trainable.safetensors"))
        params = trainable_parameters(model)
        missing = set(params) - set(weights)
        if missing:
            raise RuntimeError(f"checkpoint {path} lacks parameters {sorted(missing)[:5]}...; was it written by a different model or LoRA setting?")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])
        state = load_state(path / "state.pt")
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        return state["step"], state["extra"]


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint directory was written at, from its name (``step-NNNNNNN``)."""
    return int(path.name.split("-")[-1])


def open_checkpoints(output_dir: str | Path, resume: bool, keep: int = 2) -> tuple[Checkpointer, Path | None]:
    """(Checkpointer, the checkpoint to resume from or None) for a run writing to ``output_dir``.

    Resuming picks the latest complete checkpoint (none: start at step 0, with a note). A fresh
    run removes an earlier run's checkpoints and ``metrics.jsonl``, which the logger appends to,
    so nothing of the old run is resumed from or mixed into the new log by mistake.
    """
    checkpoints = Checkpointer(output_dir, keep=keep)
    latest = checkpoints.latest()
    if resume:
        if latest is None:
            print(f"train.resume=true but no checkpoint in {checkpoints.root}; starting from step 0")
        return checkpoints, latest
    if latest is not None:
        print(f"{output_dir} holds checkpoints of an earlier run; starting afresh (train.resume=true continues instead)")
        shutil.rmtree(checkpoints.root)
    (Path(output_dir) / "metrics.jsonl").unlink(missing_ok=True)
    return checkpoints, None


class RunLogger:
    """Metrics to ``metrics.jsonl`` and TensorBoard, progress (a bar on a terminal, plain lines elsewhere), and a summary at the end."""

    def __init__(self, output_dir: str | Path, total_steps: int, start_step: int = 0, progress: bool = True, title: str = "train"):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.jsonl = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        self.history: dict[str, list[float]] = {}
        self.start_time = time.time()
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is a dependency; without it the JSONL log still has everything
            print_clean(warning_markup(f"[warning] TensorBoard logging is off: {e} (install tensorboard to get it; metrics.jsonl has every metric)"))
        else:
            self._tb = SummaryWriter(str(self.dir / "tensorboard"))  # any failure to start it is an error
        self._progress = Progress(title, total_steps, completed=start_step, enabled=progress, unit="steps")

    def log(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        record = {"step": step, "split": split, "time": round(time.time() - self.start_time, 3), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for k, v in metrics.items():
            self.history.setdefault(f"{split}/{k}", []).append(float(v))
            if self._tb is not None:
                self._tb.add_scalar(f"{split}/{k}", float(v), step)

    def advance(self, step: int, info: str = "", rate: str = "") -> None:
        self._progress.update(step, info=info, rate=rate)

    def print(self, message: str) -> None:
        """``message`` (rich markup allowed): above the bar on a terminal, plain text elsewhere."""
        self._progress.print(message)

    def warn(self, message: str) -> None:
        """``message`` highlighted as a warning on a terminal, as it is (brackets kept) elsewhere."""
        self._progress.print(warning_markup(message))

    def close(self) -> None:
        self._progress.close()
        if self._tb is not None:
            self._tb.close()
        self.jsonl.close()

    def summary(self, title: str, rows: dict[str, Any], notes: dict[str, Any] | None = None) -> None:
        """Print ``rows`` as a table and write them, with ``notes`` (longer entries such as the data
        report, already printed when they happened), to ``summary.json``."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_header=False)
        for k, v in rows.items():
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        Console().print(table)
        (self.dir / "summary.json").write_text(json.dumps({**rows, **(notes or {})}, indent=2, default=str))


def load_trainable_model(model_cfg, lora_cfg, seed: int = 0):
    """Load the model named in ``model_cfg`` for training, with LoRA adapters if ``lora_cfg.enabled``,
    on ``model_cfg.device`` with float32 weights; ``model_cfg.dtype`` becomes this process's
    placement (``tether.parallel.autocast`` around forward passes)."""
    from tether.models import apply_lora, load_model
    from tether.parallel import init, resolve_placement, set_placement

    init()  # under torchrun: join the process group (a no-op in a single process)
    placement = resolve_placement(model_cfg.device, model_cfg.dtype)
    set_placement(placement)
    set_seed(seed)  # a 'tiny' model and new adapters are initialised from the seed (on the CPU, so every device draws the same)
    model, tokenizer = load_model(model_cfg.name_or_path, trust_remote_code=model_cfg.trust_remote_code)
    model.to(placement.device)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if model_cfg.lean_activations:
        from tether.models import apply_lean_activations

        apply_lean_activations(model)
    if lora_cfg.enabled:
        from tether.models.lora import lora_arguments

        model = apply_lora(model, **lora_arguments(lora_cfg))
    return model, tokenizer
