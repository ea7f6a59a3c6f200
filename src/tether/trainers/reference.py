"""Reference policies for objectives that compare the policy with where it started.

Three ways to get reference log-probabilities, from most to least memory:

* ``copy``: a frozen deep copy of the initial model (twice the weights in memory);
* ``adapter``: with LoRA, the same model with its adapters switched off (no second copy);
* ``cached``: one pass over the data before training computes every sequence's reference
  log-probability and stores it on disk, keyed by a fingerprint of the model weights, the
  tokenized data and the settings that change the numbers; training then holds no reference.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from tether import parallel
from tether.data.batches import TokenBatch
from tether.data.layouts import Layout, collate_layout
from tether.trainers.offline import Example

REFERENCE_MODES = ("auto", "copy", "adapter", "cached")


def sequence_logps(model, batch: TokenBatch, chunk_size: int) -> torch.Tensor:
    """Summed completion log-probability of every sequence in ``batch`` -> [N]."""
    from tether.models import forward_token_logprobs

    return batch.per_sequence(forward_token_logprobs(model, batch, chunk_size=chunk_size))


def fingerprint(model: torch.nn.Module, examples: list[Example], *parts: object) -> str:
    """Hash of the model's weights, the examples' tokens and any extra settings."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    for e in examples:
        for ids, plen in e.sequences:
            h.update(str(plen).encode())
            h.update(torch.as_tensor(ids, dtype=torch.int32).numpy().tobytes())
    h.update(repr(parts).encode())
    return h.hexdigest()[:24]


def cache_root() -> Path:
    return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether")) / "reference-logps"


@torch.no_grad()
def compute_reference_logps(
    model: torch.nn.Module, examples: list[Example], pad_id: int, layout: Layout, row_tokens: int, chunk_size: int, micro_batch_size: int, progress: Callable[[int], None] | None = None
) -> list[list[float]]:
    """Reference log-probability of every slot of every example, in example order."""
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(examples), micro_batch_size):
        chunk = examples[start : start + micro_batch_size]
        batch = collate_layout(layout, [e.sequences for e in chunk], pad_id, row_tokens).to(parallel.device())
        with parallel.autocast():  # the precision training runs in, so step 0's policy equals its reference
            logps = sequence_logps(model, batch, chunk_size).tolist()
        k = 0
        for e in chunk:
            out.append(logps[k : k + len(e.sequences)])
            k += len(e.sequences)
        if progress:
            progress(len(chunk))
    model.train(was_training)
    return out


def attach_cached_reference(model, examples_by_split: dict[str, list[Example]], pad_id: int, layout: Layout, row_tokens: int, chunk_size: int, micro_batch_size: int) -> Path:
    """Fill ``example.extra['ref_logps']`` for every example, from the disk cache or one pass now.

    Must be called before training changes the weights: the current model *is* the reference.
    Returns the cache file.
    """
    everything = [e for split in examples_by_split.values() for e in split]
    compute = parallel.placement().compute_dtype  # bf16 reference values differ from float32 ones; float32 keys stay as they were
    key = fingerprint(model, everything, "v1", chunk_size, *([str(compute)] if compute is not None else []))
    path = cache_root() / f"{key}.pt"
    if path.exists():
        values = torch.load(path, weights_only=True)
        print(f"reference log-probabilities: loaded from cache {path}")
    else:
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task("reference pass", total=len(everything))
            values = compute_reference_logps(model, everything, pad_id, layout, row_tokens, chunk_size, micro_batch_size, lambda n: bar.advance(task, n))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(values, tmp)
        os.replace(tmp, path)  # atomic: a killed pass never leaves a truncated cache
    for e, v in zip(everything, values):
        e.extra["ref_logps"] = v
    return path


class ReferencePolicy:
    """Gives reference log-probabilities for a batch, by the chosen mode."""

    def __init__(self, mode: str, model: torch.nn.Module, chunk_size: int):
        if mode not in REFERENCE_MODES[1:]:
            raise ValueError(f"reference mode must be one of {REFERENCE_MODES[1:]}, got {mode!r}")
        self.mode = mode
        self.chunk_size = chunk_size
        self.frozen = None
        if mode == "copy":
            self.frozen = copy.deepcopy(model).eval()
            for p in self.frozen.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def logps(self, model: torch.nn.Module, batch: TokenBatch, examples: list[Example]) -> torch.Tensor:
        """[N] reference log-probabilities, sequences in the batch's example-major order."""
        if self.mode == "cached":
            return torch.tensor([v for e in examples for v in e.extra["ref_logps"]], dtype=torch.float32)
        if self.mode == "copy":
            return sequence_logps(self.frozen, batch, self.chunk_size)
        from tether.models import disabled_adapter

        was_training = model.training
        model.eval()  # no dropout in the reference
        with disabled_adapter(model) if hasattr(model, "disable_adapter") else nullcontext():
            out = sequence_logps(model, batch, self.chunk_size)
        model.train(was_training)
        return out


def resolve_mode(mode: str, lora_enabled: bool) -> str:
    if mode == "auto":
        return "adapter" if lora_enabled else "cached"
    if mode == "adapter" and not lora_enabled:
        raise ValueError("reference mode 'adapter' needs lora.enabled=true (the reference is the model with its adapters off)")
    return mode
