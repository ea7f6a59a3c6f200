"""Pairs and rankings laid out so that their shared prompt runs through the model once.

Every completion of a preference pair or a ranking continues the same prompt. Under causal
attention the prompt's hidden states do not depend on what follows it, so instead of K rows
``[prompt, completion_k]`` we run one segment ``[prompt, completion_1, ..., completion_K]`` in
which completion k's tokens take positions p, p+1, ... (as if it followed the prompt alone) and
attend only to the prompt and to their own earlier tokens. Every hidden state equals the one
the separate sequence would give, but the prompt (on the bundled preferences, 60% of each
sequence, most of it the chat template's system turn) is computed once instead of K times.

Segments are packed into rows of about ``row_tokens`` tokens (first fit, longest first) with a
4-D additive attention mask that also keeps segments apart, so no compute goes to padding
either. Examples whose slots do not share their prompt tokens (their prompts were truncated
differently) become one segment per slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SharedPrefixBatch:
    input_ids: torch.Tensor  # [R, T] long
    position_ids: torch.Tensor  # [R, T] long; completion k of a segment restarts at the prompt length
    attention_mask: torch.Tensor  # [R, 1, T, T] float: 0 where query t may attend key s, dtype min elsewhere
    last_index: torch.Tensor  # [N] long: flat index (row * T + t) of each sequence's last token, example-major
    num_sequences: int  # N

    def to(self, device) -> SharedPrefixBatch:
        return SharedPrefixBatch(
            self.input_ids.to(device), self.position_ids.to(device), self.attention_mask.to(device), self.last_index.to(device), self.num_sequences
        )


def _segments(example: list[tuple[list[int], int]]):
    """One example's slots -> segments of (ids, positions, branch ids, last offset of each slot in it).

    Branch 0 is the shared prompt; branch k + 1 is completion k.
    """
    prompt_len = example[0][1]
    prompt = example[0][0][:prompt_len]
    shared = prompt_len > 0 and all(plen == prompt_len and ids[:plen] == prompt for ids, plen in example)
    if not shared:
        return [(list(ids), list(range(len(ids))), [1] * len(ids), [len(ids) - 1]) for ids, _ in example]
    ids, positions, branches, lasts = list(prompt), list(range(prompt_len)), [0] * prompt_len, []
    for k, (seq, _) in enumerate(example):
        completion = seq[prompt_len:]
        ids += completion
        positions += range(prompt_len, prompt_len + len(completion))
        branches += [k + 1] * len(completion)
        lasts.append(len(ids) - 1 if completion else prompt_len - 1)  # an empty completion is scored at the prompt's end
    return [(ids, positions, branches, lasts)]


def collate_shared_prefix(examples: list[list[tuple[list[int], int]]], pad_id: int, row_tokens: int = 512, dtype: torch.dtype = torch.float32) -> SharedPrefixBatch:
    """Examples (each a list of (input_ids, prompt_len) slots sharing one prompt) -> SharedPrefixBatch.

    ``last_index`` lists the slots example-major (slot k of example i is sequence ``sum of earlier
    slot counts + k``), as ``tether.data.batches.collate`` orders its sequences.
    """
    segments = []  # (ids, positions, branches, [(sequence number, offset)])
    seq = 0
    for example in examples:
        for ids, positions, branches, lasts in _segments(example):
            segments.append((ids, positions, branches, [(seq + j, off) for j, off in enumerate(lasts)]))
            seq += len(lasts)
    # First fit, longest first: few rows and little padding; attention costs T^2 per row, so rows stay near row_tokens.
    rows: list[list[int]] = []
    fill: list[int] = []
    for s in sorted(range(len(segments)), key=lambda s: -len(segments[s][0])):
        n = len(segments[s][0])
        target = next((r for r in range(len(rows)) if fill[r] + n <= row_tokens), None)
        if target is None:
            rows.append([])
            fill.append(0)
            target = len(rows) - 1
        rows[target].append(s)
        fill[target] += n
    width = max(fill)
    r_count = len(rows)
    input_ids = torch.full((r_count, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((r_count, width), dtype=torch.long)
    segment_of = torch.arange(width).neg().sub(1).repeat(r_count, 1)  # [R, T]; a pad is its own segment (-t-1)
    branch_of = torch.zeros((r_count, width), dtype=torch.long)
    last_index = torch.zeros(seq, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for s in members:
            ids, positions, branches, lasts = segments[s]
            n = len(ids)
            input_ids[r, at : at + n] = torch.tensor(ids)
            position_ids[r, at : at + n] = torch.tensor(positions)
            segment_of[r, at : at + n] = s
            branch_of[r, at : at + n] = torch.tensor(branches)
            for number, offset in lasts:
                last_index[number] = r * width + at + offset
            at += n
    query_seg, key_seg = segment_of.unsqueeze(2), segment_of.unsqueeze(1)  # [R, T, 1], [R, 1, T]
    query_branch, key_branch = branch_of.unsqueeze(2), branch_of.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # [T, T], key s <= query t
    allowed = (query_seg == key_seg) & causal & ((key_branch == 0) | (key_branch == query_branch))  # [R, T, T]
    mask = torch.zeros((r_count, 1, width, width), dtype=dtype).masked_fill(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    return SharedPrefixBatch(input_ids, position_ids, mask, last_index, seq)


__all__ = ["SharedPrefixBatch", "collate_shared_prefix"]
