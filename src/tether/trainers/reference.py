"""The reference policy, for offline (DPO family) and online (PPO, GRPO, RLOO) training alike.

Three ways to get reference log-probabilities, from most to least memory:

* ``copy``: a frozen deep copy of the initial model (twice the weights in memory);
* ``adapter``: with LoRA, the same model with its adapters switched off (no second copy);
* ``cached``: offline only. Each example's reference log-probabilities are computed once, before
  training changes the weights, and stored on disk keyed by a fingerprint of the model's weights
  and of the example's tokens; training then holds no reference.

``resolve_mode`` is the one rule for ``auto``: with LoRA, ``adapter``; without, ``cached`` for a
fixed data set and ``copy`` for online RL, whose samples are new every step (there is nothing to
cache ahead). ``Reference`` holds the chosen policy and runs a forward pass under it; the offline
``ReferencePolicy`` and the online trainers' ``Reference`` subclass it with the two shapes of
output they need (one sum per sequence; one log-prob per response token).

The cache costs what the run uses: ``CachedReference.prepare`` receives every example the run's
steps and its (bounded) evaluation will use, in that order (the step plan is fixed by the seed,
so it is known before step one), computes only those not yet on disk, and writes them as it goes.
A short run over a large file pays for its own batches; a repeated or resumed run computes nothing
it already has; a full epoch computes each example once, as an up-front pass over everything did.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from tether import parallel
from tether.data.batches import TokenBatch
from tether.data.layouts import Layout, collate_layout
from tether.trainers.offline import Example

REFERENCE_MODES = ("auto", "copy", "adapter", "cached")


def resolve_mode(mode: str, lora_enabled: bool, fresh_samples: bool = False) -> str:
    """The reference mode a run uses. ``fresh_samples``: the policy is trained on samples drawn
    during training (online RL), so no reference can be computed ahead and cached."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"reference mode must be one of {REFERENCE_MODES}, got {mode!r}")
    if mode == "auto":
        return "adapter" if lora_enabled else ("copy" if fresh_samples else "cached")
    if mode == "adapter" and not lora_enabled:
        raise ValueError("reference mode 'adapter' needs lora.enabled=true (the reference is the model with its adapters off)")
    if mode == "cached" and fresh_samples:
        raise ValueError("reference mode 'cached' needs a fixed data set; online samples are new every step (use copy, or adapter with LoRA)")
    return mode


def sequence_logps(model, batch: TokenBatch, chunk_size: int) -> torch.Tensor:
    """Summed completion log-probability of every sequence in ``batch`` -> [N]."""
    from tether.models import forward_token_logprobs

    return batch.per_sequence(forward_token_logprobs(model, batch, chunk_size=chunk_size))


class Reference:
    """The reference policy in modes ``copy`` and ``adapter`` (``cached`` holds no model).

    Built before training changes the weights: a ``copy`` is taken of the model as it is now.
    """

    def __init__(self, mode: str, model: torch.nn.Module, lora_enabled: bool, fresh_samples: bool = False):
        self.mode = resolve_mode(mode, lora_enabled, fresh_samples)
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False) if self.mode == "copy" else None

    @contextmanager
    def network(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Within the block, the module whose forward pass is the reference: the frozen copy, or
        ``model`` with its adapters off and in eval mode (no dropout), restored afterwards."""
        if self.mode == "cached":
            raise RuntimeError("a cached reference runs no model; read the cached values instead")
        if self.frozen is not None:
            with torch.no_grad():
                yield self.frozen
            return
        from tether.models import disabled_adapter

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), disabled_adapter(model) if hasattr(model, "disable_adapter") else nullcontext(model) as base:
                yield base
        finally:
            model.train(was_training)


class ReferencePolicy(Reference):
    """Offline: the reference's summed log-probability of each sequence of a batch of examples."""

    def __init__(self, mode: str, model: torch.nn.Module, chunk_size: int, cache: CachedReference | None = None):
        if mode not in REFERENCE_MODES[1:]:
            raise ValueError(f"reference mode must be one of {REFERENCE_MODES[1:]}, got {mode!r}")
        super().__init__(mode, model, lora_enabled=hasattr(model, "disable_adapter"))
        self.chunk_size = chunk_size
        self.cache = cache

    def prepare(self, model: torch.nn.Module, examples: list[Example], dist=None) -> None:
        """Cached mode: make sure every one of ``examples`` has its reference values (see the module doc).
        ``dist``: the run's ``trainers.distributed.Distributed`` (the pass is split across processes)."""
        if self.mode == "cached" and self.cache is not None:
            self.cache.prepare(model, examples, dist)

    @torch.no_grad()
    def logps(self, model: torch.nn.Module, batch: TokenBatch, examples: list[Example]) -> torch.Tensor:
        """[N] reference log-probabilities, sequences in the batch's example-major order."""
        if self.mode == "cached":
            missing = [e.extra.get("source", "?") for e in examples if "ref_logps" not in e.extra]
            if missing:
                raise RuntimeError(f"no cached reference log-probabilities for {missing[:3]}; the objective's prepare() must see every example first")
            return torch.tensor([v for e in examples for v in e.extra["ref_logps"]], dtype=torch.float32)
        with self.network(model) as net:
            return sequence_logps(net, batch, self.chunk_size)


# --------------------------------------------------------------------------- the disk cache


def cache_root() -> Path:
    return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether")) / "reference-logps"


def model_fingerprint(model: torch.nn.Module, *parts: object) -> str:
    """Hash of the model's weights (every entry of its state dict) and any extra settings."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = tensor.detach()
        if hasattr(t, "full_tensor"):  # a DTensor shard under FSDP: hash the whole weight (every process calls this)
            t = t.full_tensor()
        t = t if t.dtype in (torch.float32, torch.float64, torch.int64, torch.int32) else t.to(torch.float32)
        h.update(t.contiguous().cpu().numpy().data)  # the buffer itself: no copy for float32 weights
    h.update(repr(parts).encode())
    return h.hexdigest()[:24]


def example_key(example: Example) -> str:
    """Hash of an example's token sequences (every slot's ids and prompt length)."""
    h = hashlib.sha256()
    for ids, prompt_len in example.sequences:
        h.update(str((prompt_len, len(ids))).encode())
        h.update(torch.as_tensor(ids, dtype=torch.int32).numpy().data)
    return h.hexdigest()[:32]


@torch.no_grad()
def compute_reference_logps(model: torch.nn.Module, examples: list[Example], pad_id: int, layout: Layout, row_tokens: int, chunk_size: int, dist=None) -> list[list[float]]:
    """Reference log-probability of every slot of every example (one forward pass), in example order.
    ``dist``: the run's ``Distributed``, whose ``run`` goes through the FSDP root when sharded."""
    was_training = model.training
    model.eval()
    batch = collate_layout(layout, [e.sequences for e in examples], pad_id, row_tokens).to(parallel.device())
    with parallel.autocast():  # the precision training runs in, so step 0's policy equals its reference
        logps = (dist.run(sequence_logps, batch, chunk_size) if dist is not None else sequence_logps(model, batch, chunk_size)).tolist()
    model.train(was_training)
    out, k = [], 0
    for e in examples:
        out.append(logps[k : k + len(e.sequences)])
        k += len(e.sequences)
    return out


class CachedReference:
    """Reference log-probabilities on disk under ``<cache>/reference-logps/<model fingerprint>/``.

    The directory holds shard files, each a ``{"keys": [example key], "values": [[float]]}``
    written whole to a temporary name and renamed into place (atomic: a killed writer leaves no
    partial shard), read back with ``weights_only=True``. New values are written every
    ``flush_every`` examples or ``flush_seconds``, whichever first, and when ``prepare`` ends:
    one shard per few hundred examples, not a file per example (a 20,000-pair set makes tens of
    files, not thousands), and a killed pass loses at most one shard's worth. Past
    ``MAX_SHARDS`` files the shards are merged into one when the cache is opened.
    """

    MAX_SHARDS = 64

    def __init__(self, pad_id: int, layout: Layout, row_tokens: int, chunk_size: int, micro_batch_size: int, progress: bool = True, flush_every: int = 256, flush_seconds: float = 60.0):
        self.pad_id, self.layout, self.row_tokens, self.chunk_size, self.micro_batch_size = pad_id, layout, row_tokens, chunk_size, micro_batch_size
        self.progress, self.flush_every, self.flush_seconds = progress, flush_every, flush_seconds
        self.directory: Path | None = None
        self.values: dict[str, list[float]] = {}
        self._pending: dict[str, list[float]] = {}
        self.computed = 0  # examples this process computed (tests and the run's report read it)

    def open(self, model: torch.nn.Module) -> None:
        """Fingerprint the model (the reference: call before training) and read its shards."""
        started = time.time()
        compute = parallel.placement().compute_dtype  # bf16 reference values differ from float32 ones; float32 keys stay as they were
        self.directory = cache_root() / model_fingerprint(model, "v2", *([str(compute)] if compute is not None else []))
        shards = sorted(self.directory.glob("shard-*.pt")) if self.directory.exists() else []
        for shard in shards:
            data = torch.load(shard, weights_only=True)
            self.values.update(zip(data["keys"], data["values"]))
        parallel.barrier()  # under torchrun: every process has read the shards before the main one merges or adds any
        if len(shards) > self.MAX_SHARDS and parallel.is_main():
            self._write(dict(self.values))
            for shard in shards:
                shard.unlink(missing_ok=True)
        print(f"reference log-probabilities: cache {self.directory} holds {len(self.values)} examples (model fingerprint and read: {time.time() - started:.1f} s)")

    def _write(self, entries: dict[str, list[float]]) -> None:
        if not parallel.is_main():  # under torchrun every process holds the gathered values; one writes them
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"shard-{time.time_ns()}-{os.getpid()}.pt"
        tmp = final.with_suffix(f".tmp{os.getpid()}")
        torch.save({"keys": list(entries), "values": list(entries.values())}, tmp)
        os.replace(tmp, final)

    def flush(self) -> None:
        if self._pending:
            self._write(self._pending)
            self._pending = {}

    def prepare(self, model: torch.nn.Module, examples: list[Example], dist=None) -> None:
        """Fill ``example.extra['ref_logps']`` for each of ``examples``, computing (with ``model``,
        which must still be the reference) only those the cache lacks, in the order given.

        Under torchrun the pass is split: the examples to compute are cut into the micro-batches one
        process would run (the same batches, so every value is the one a single process computes),
        process r runs batches r, r + n, ..., and each round's values are gathered to every process;
        the main process alone writes them. ``dist``: the run's ``Distributed`` (FSDP runs each
        forward pass through its root, and every process joins every round's pass)."""
        import math

        from tether.trainers.progress import Progress

        if self.directory is None:
            self.open(model)
        unique = list({id(e): e for e in examples}.values())
        keys = {id(e): example_key(e) for e in unique}
        todo = list({keys[id(e)]: e for e in unique if keys[id(e)] not in self.values}.values())  # one per key
        todo.sort(key=lambda e: e.num_tokens)  # similar lengths batched together: less padding, as in training
        w = parallel.world()
        if w.distributed:  # the main process's list and order, so every process runs the same rounds
            by_key = {keys[id(e)]: e for e in unique}
            todo = [by_key[k] for k in parallel.broadcast_object([keys[id(e)] for e in todo])]
        print(f"reference log-probabilities: this run uses {len(unique)} examples, {len(unique) - len(todo)} cached, computing {len(todo)}")
        if todo:
            batches = [todo[i : i + self.micro_batch_size] for i in range(0, len(todo), self.micro_batch_size)]
            lockstep = dist is not None and dist.lockstep
            last_flush = time.time()
            with Progress("reference pass", len(todo), enabled=self.progress, unit="ex") as bar:
                for r in range(math.ceil(len(batches) / w.size)):
                    k = r * w.size + w.rank
                    chunk = batches[k] if k < len(batches) else []
                    if chunk:
                        got = compute_reference_logps(model, chunk, self.pad_id, self.layout, self.row_tokens, self.chunk_size, dist)
                    elif lockstep:  # FSDP gathers weights inside every forward pass: join this round's, discarding it
                        compute_reference_logps(model, batches[0], self.pad_id, self.layout, self.row_tokens, self.chunk_size, dist)
                    mine = [(keys[id(e)], v) for e, v in zip(chunk, got)] if chunk else []
                    self.computed += len(chunk)
                    for piece in parallel.gather_objects(mine):
                        for key, v in piece:
                            self.values[key] = self._pending[key] = v
                        bar.advance(len(piece))
                    if len(self._pending) >= self.flush_every or time.time() - last_flush >= self.flush_seconds:
                        self.flush()
                        last_flush = time.time()
            self.flush()
        for e in unique:
            e.extra["ref_logps"] = self.values[keys[id(e)]]
