"""Reading a torch.distributed.checkpoint (DCP) directory without running code from it.

DCP reads two things with pickle, as of torch 2.13: the directory's ``.metadata`` (plain
``pickle.load`` in ``FileSystemReader.read_metadata``) and every non-tensor entry of the state
(``DefaultLoadPlanner.load_bytes``: ``torch.load(weights_only=False)``; AdamW's param_groups —
lr, betas, eps, ... — are such entries). Either would run whatever a planted file asks on the
resuming machine. tether promises that no load path unpickles untrusted data, so a sharded resume
goes through the two classes here instead:

* ``SafeReader``: ``.metadata`` through an Unpickler that admits only what DCP's metadata is made
  of (its own dataclasses and enums, ``torch.Size``, dtypes, the layout lookup, paths) and refuses
  any other global, naming the file, before anything is called;
* ``SafePlanner``: the non-tensor entries through ``torch.load(weights_only=True)`` (numbers,
  strings, tuples, containers). The tensor data itself DCP already reads with ``weights_only=True``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

from tether.trainers.common import UnsafeCheckpointError

METADATA_MODULE = "torch.distributed.checkpoint.metadata"
# Globals a DCP ``.metadata`` pickle names besides the classes of METADATA_MODULE and torch dtypes:
# each is a plain value type or a lookup by name that runs nothing else.
ALLOWED = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # a layout by its name, from torch's own table
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),  # a dataclass: file, offset, length
    ("pathlib", "Path"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


def _metadata_class(module: str, name: str) -> Any | None:
    """The dataclass or enum ``name`` defined in DCP's metadata module, else None."""
    import importlib

    obj = getattr(importlib.import_module(METADATA_MODULE), name, None)
    return obj if isinstance(obj, type) and obj.__module__ == METADATA_MODULE else None


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata``; any global outside what such a file needs is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if module == METADATA_MODULE and _metadata_class(module, name) is not None:
            return _metadata_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"refusing to resume from {self.path}: it names {module}.{name}, which no torch.distributed.checkpoint metadata "
            "holds, and loading it could run code (was the checkpoint made elsewhere?)"
        )


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` goes through ``MetadataUnpickler``. ``refused``:
    the refusal, kept because ``dcp.load`` catches a failed metadata read and raises its own error."""

    refused: UnsafeCheckpointError | None = None

    def read_metadata(self, *args: Any, **kwargs: Any):
        from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

        where = getattr(self, "_get_metadata_path", None)  # per-rank metadata files (rank=...) in newer torch
        path = Path(str(where(kwargs.get("rank")))) if where is not None else Path(str(self.path)) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = MetadataUnpickler(io.BytesIO(f.read()), path).load()
            if not isinstance(metadata, Metadata):
                raise UnsafeCheckpointError(f"refusing to resume from {path}: it holds a {type(metadata).__name__}, not DCP metadata")
        except UnsafeCheckpointError as e:
            self.refused = self.refused or e
            raise
        if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader.read_metadata does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` whose non-tensor entries load with ``weights_only=True``."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        from torch.distributed.checkpoint._traverse import set_element

        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"refusing to resume: the checkpoint's entry {read_item.dest_index.fqn} holds objects other than plain values, "
                f"and loading them could run code. torch said: {str(e).splitlines()[0]}"
            ) from None
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def safe_load(state: dict, directory: Path) -> None:
    """``dcp.load(state, checkpoint_id=directory)`` through ``SafeReader`` and ``SafePlanner``."""
    import torch.distributed.checkpoint as dcp

    reader = SafeReader(str(directory))
    try:
        dcp.load(state, storage_reader=reader, planner=SafePlanner())
    except BaseException as e:  # DCP gathers each process's failure into a CheckpointException (a BaseException)
        failures = getattr(e, "failures", {}) or {}
        unsafe = [reader.refused] + [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        unsafe = [u for u in unsafe if isinstance(u, UnsafeCheckpointError)]
        if unsafe:
            raise unsafe[0] from None
        raise


__all__ = ["MetadataUnpickler", "SafePlanner", "SafeReader", "safe_load"]
