"""Data: read files into typed records, validate them, tokenise them with a chat template.

``load_records`` is the entry point. Importing this package does not import torch or
transformers; ``tether.data.encode`` and ``tether.data.batches`` do what needs them.
"""

from __future__ import annotations

import os

from tether.data.errors import DataError
from tether.data.normalize import Kind, accepted_shapes, detect_kind, normalize_rows, parse_hh_transcript
from tether.data.readers import bundled_path, read_rows
from tether.data.records import (
    Demonstration,
    LoadedRecords,
    Message,
    PreferencePair,
    Prompt,
    Ranking,
    Source,
    UnpairedExample,
)


def load_records(
    path: str | os.PathLike,
    kind: str = "auto",
    on_error: str = "raise",
    split: str = "train",
    score_key: str | None = None,
) -> LoadedRecords:
    """Read and validate a data file: JSON, JSONL, CSV/TSV, Parquet, a directory written by
    ``datasets``' ``save_to_disk`` (``split`` picks from a DatasetDict), or ``bundled:<name>``.

    ``kind``: "auto" (from the fields of the rows), "demonstration", "preference", "ranking",
    "unpaired" or "prompt" (prompts alone, from any of the others too). ``on_error``: "raise" stops at the first malformed row with a ``DataError``
    naming file, line, field and reason; "skip" leaves such rows out and returns their errors
    in ``LoadedRecords.skipped``. ``score_key``: where a ranking's completion objects hold their
    score, e.g. ``annotations.helpfulness.Rating`` (see ``tether.data.rankings``).
    """
    return normalize_rows(read_rows(path, split), str(path), kind, on_error, score_key)


__all__ = [
    "DataError",
    "Demonstration",
    "Kind",
    "LoadedRecords",
    "Message",
    "PreferencePair",
    "Prompt",
    "Ranking",
    "Source",
    "UnpairedExample",
    "accepted_shapes",
    "bundled_path",
    "detect_kind",
    "load_records",
    "parse_hh_transcript",
    "read_rows",
]
