"""How a micro-batch of examples (each a list of (input_ids, prompt_len) slots) becomes rows.

Every layout numbers sequences the same way (example-major: slot k of example i is sequence
``sum of earlier slot counts + k``) and yields a ``TokenBatch``, so a trainer picks its layout
by configuration and the rest of its loop does not change:

* padded: one row per sequence, right-padded;
* packed: several sequences per row, no padding (``tether.data.batches``);
* shared prompt: the prompt of a pair or ranking runs once and its completions branch off it
  (``tether.data.shared_prefix``); for single-slot examples it is packing with a 4-D mask.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from tether.data.batches import TokenBatch, collate

Slots = Sequence[tuple[Sequence[int], int]]


class Layout(enum.Enum):
    PADDED = "padded"
    PACKED = "packed"
    SHARED_PROMPT = "shared_prompt"


def resolve_layout(share_prompt: bool, pack: bool) -> Layout:
    """The configured layout: sharing the prompt wins, then packing, else padding."""
    return Layout.SHARED_PROMPT if share_prompt else (Layout.PACKED if pack else Layout.PADDED)


def collate_layout(layout: Layout, groups: Sequence[Slots], pad_id: int, row_tokens: int = 512) -> TokenBatch:
    """``groups`` (one list of slots per example) laid out as ``layout``."""
    if layout is Layout.SHARED_PROMPT:
        from tether.data.shared_prefix import collate_shared_prefix

        return collate_shared_prefix([list(g) for g in groups], pad_id, row_tokens)
    return collate(groups, pad_id, layout is Layout.PACKED, row_tokens)


__all__ = ["Layout", "collate_layout", "resolve_layout"]
