"""Token batches: the one tensor container every trainer consumes.

A batch holds N sequences, each ``input_ids`` with a ``prompt_len``: the tokens from
``prompt_len`` on are the completion and the only ones that carry loss. Two layouts:

* padded: one sequence per row, right-padded, with an ``attention_mask``;
* packed: several sequences per row, ``position_ids`` restarting at 0 for each, no
  ``attention_mask`` (transformers builds the block-diagonal causal mask from the
  position ids), so no compute is spent on padding.

Targets are pre-shifted: position t predicts ``target_ids[t]`` (the sequence's token t+1), so
losses index logits and targets at the same position. ``sequence_ids[t]`` names the sequence
that owns that prediction, which turns token values into per-sequence sums with one
``index_add_`` in either layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [R, T] long
    position_ids: torch.Tensor  # [R, T] long
    attention_mask: torch.Tensor | None  # [R, T] long (padded) or None (packed)
    target_ids: torch.Tensor  # [R, T] long, token predicted at position t (0 where none)
    loss_mask: torch.Tensor  # [R, T] bool, target is a completion token
    sequence_ids: torch.Tensor  # [R, T] long, owning sequence of position t's target, -1 if none
    num_sequences: int

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def num_real_tokens(self) -> int:
        return int((self.sequence_ids >= 0).sum()) + self.num_sequences

    def to(self, device: torch.device | str) -> TokenBatch:
        moved = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name))
            for f in fields(self)
        }
        return type(self)(**moved)

    def per_sequence(self, token_values: torch.Tensor) -> torch.Tensor:
        """Sum ``token_values`` [R, T] over each sequence's loss tokens -> [N] (``losses.reduce.sum_per_sequence``)."""
        from tether.losses.reduce import sum_per_sequence

        return sum_per_sequence(token_values, self.sequence_ids, self.loss_mask, self.num_sequences)

    def loss_tokens_per_sequence(self) -> torch.Tensor:
        """Completion tokens per sequence -> [N] float."""
        return self.per_sequence(self.loss_mask.float())


def _place(seq: Sequence[int], prompt_len: int, seq_index: int, row: int, start: int, out: dict[str, torch.Tensor]) -> None:
    """Write one sequence into the batch tensors at ``[row, start : start + len(seq)]``."""
    n = len(seq)
    ids = torch.as_tensor(seq, dtype=torch.long)  # [n]
    out["input_ids"][row, start : start + n] = ids
    out["position_ids"][row, start : start + n] = torch.arange(n)
    # Position t (t < n-1) predicts token t+1; it is trained when token t+1 is a completion token.
    out["target_ids"][row, start : start + n - 1] = ids[1:]
    out["sequence_ids"][row, start : start + n - 1] = seq_index
    first_trained = max(prompt_len - 1, 0)
    out["loss_mask"][row, start + first_trained : start + n - 1] = True


def _empty(rows: int, width: int, pad_id: int) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.full((rows, width), pad_id, dtype=torch.long),
        "position_ids": torch.zeros(rows, width, dtype=torch.long),
        "target_ids": torch.zeros(rows, width, dtype=torch.long),
        "loss_mask": torch.zeros(rows, width, dtype=torch.bool),
        "sequence_ids": torch.full((rows, width), -1, dtype=torch.long),
    }


def pad_batch(sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int) -> TokenBatch:
    """One sequence per row, right-padded to the longest."""
    width = max(len(s) for s in sequences)
    out = _empty(len(sequences), width, pad_id)
    attention_mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for i, (seq, plen) in enumerate(zip(sequences, prompt_lens)):
        _place(seq, plen, i, i, 0, out)
        attention_mask[i, : len(seq)] = 1
    # Right padding sits after every real token, so causal attention never lets it touch them.
    return TokenBatch(attention_mask=attention_mask, num_sequences=len(sequences), **out)


def balanced_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """Indices of items of the given lengths grouped into rows of about ``row_tokens`` tokens.

    Every row is padded to the widest, so what matters is that rows come out equally full: take
    R = ceil(total / row_tokens) rows and give each item, longest first, to the emptiest row. (A
    first-fit packing fills R - 1 rows and leaves the last one part empty: on the bundled
    preferences that was a fifth of each DPO batch spent on padding.) A row may run past
    ``row_tokens`` by less than one item; an item longer than ``row_tokens`` is a row of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    alone = [i for i in order if lengths[i] >= row_tokens]
    rest = [i for i in order if lengths[i] < row_tokens]
    rows: list[list[int]] = [[i] for i in alone]
    if rest:
        count = -(-sum(lengths[i] for i in rest) // row_tokens)  # ceil
        shared = [[] for _ in range(count)]
        fill = [0] * count
        for i in rest:
            r = min(range(count), key=fill.__getitem__)
            shared[r].append(i)
            fill[r] += lengths[i]
        rows += shared
    return rows


def pack_batch(sequences: Sequence[Sequence[int]], prompt_lens: Sequence[int], pad_id: int, row_tokens: int) -> TokenBatch:
    """Several sequences per row of about ``row_tokens`` tokens (``balanced_rows``).

    Trailing space in a row is filled with pad tokens whose position ids keep increasing, so they
    read as the tail of the row's last sequence and attend only within it; they carry no loss.
    """
    rows = balanced_rows([len(s) for s in sequences], row_tokens)
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    out = _empty(len(rows), width, pad_id)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            _place(sequences[i], prompt_lens[i], i, r, start, out)
            start += len(sequences[i])
        if start < width and start > 0:
            last = len(sequences[row[-1]])
            out["position_ids"][r, start:] = torch.arange(last, last + width - start)
    return TokenBatch(attention_mask=None, num_sequences=len(sequences), **out)


def collate(groups: Sequence[Sequence[tuple[Sequence[int], int]]], pad_id: int, pack: bool = False, row_tokens: int = 512) -> TokenBatch:
    """Flatten examples of K sequences each into a batch, example-major (sequence i*K + k).

    ``groups[i][k]`` is ``(input_ids, prompt_len)`` for slot k of example i: one slot for a
    demonstration, two (chosen, rejected) for a pair, K for a ranking.
    """
    flat = [seq for group in groups for seq in group]
    ids = [s for s, _ in flat]
    plens = [p for _, p in flat]
    if pack:
        # Two row widths: the longest sequence's (about one sequence a row, little attention: a packed
        # row attends over a dense [T, T] mask) and row_tokens (several a row). The decoder's linear
        # layers run over every row position and are most of a step's time (bench/sft_profile.py),
        # so take the layout with fewer positions. On short sequences the narrow rows overshoot
        # (balanced_rows may add one more sequence) and fill worse than padding.
        widths = sorted({min(row_tokens, max(len(s) for s in ids)), row_tokens})
        return min((pack_batch(ids, plens, pad_id, w) for w in widths), key=lambda b: b.input_ids.numel())
    return pad_batch(ids, plens, pad_id)
