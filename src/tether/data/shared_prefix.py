"""Pairs and rankings laid out so that their shared prompt runs through the model once.

Every completion of a preference pair or a ranking continues the same prompt. Under causal
attention the prompt's hidden states do not depend on what follows it, so instead of K rows
``[prompt, completion_k]`` we run one segment ``[prompt[:-1], branch_1, ..., branch_K]``, where
branch k is the prompt's last token followed by completion k. Branch k's tokens take positions
p-1, p, ... (as if it followed the prompt alone) and attend only to the shared part and to their
own earlier tokens. The prompt's last token is repeated in every branch because its position
predicts the completion's first token, a different target in each branch; with it, every
position predicts one token and the batch is a ``TokenBatch`` like any other. Every hidden state equals the one
the separate sequence would give, but the prompt (on the bundled preferences, 60% of each
sequence, most of it the chat template's system turn) is computed once instead of K times.

Segments are packed into equally full rows of about ``row_tokens`` tokens (``balanced_rows``) with a
4-D additive attention mask that also keeps segments apart, so no compute goes to padding
either. Examples whose slots do not share their prompt tokens (their prompts were truncated
differently) become one segment per slot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tether.data.batches import TokenBatch, balanced_rows


@dataclass
class SharedPrefixBatch(TokenBatch):
    """A ``TokenBatch`` whose ``attention_mask`` is [R, 1, T, T] (0 where query t may attend key s,
    the dtype's minimum elsewhere) and whose ``position_ids`` restart at the prompt length for every
    completion of a segment. ``target_ids``, ``loss_mask`` and ``sequence_ids`` mean what they mean
    in any TokenBatch, so per-token log-probabilities and per-sequence sums work unchanged."""

    last_index: torch.Tensor  # [N] long: flat index (row * T + t) of each sequence's last token, example-major


@dataclass
class _Segment:
    ids: list[int]
    positions: list[int]
    branches: list[int]  # 0: the shared prompt; k + 1: completion k
    targets: list[int]  # token predicted at each position (0 where none)
    owners: list[int]  # slot (within the example) whose completion token position t predicts, -1 if none
    lasts: list[tuple[int, int]]  # (slot, offset of that slot's last token)


def _segments(example: list[tuple[list[int], int]]) -> list[_Segment]:
    """One example's slots -> its segments: one shared segment, or one per slot if prompts differ."""
    prompt_len = example[0][1]
    prompt = example[0][0][:prompt_len]
    shared = prompt_len > 0 and all(plen == prompt_len and ids[:plen] == prompt for ids, plen in example)
    if not shared:
        out = []
        for k, (ids, plen) in enumerate(example):
            n = len(ids)
            trained = range(max(plen - 1, 0), n - 1)  # positions whose next token is a completion token
            targets = [ids[t + 1] if t in trained else 0 for t in range(n)]
            owners = [k if t in trained else -1 for t in range(n)]
            out.append(_Segment(list(ids), list(range(n)), [1] * n, targets, owners, [(k, n - 1)]))
        return out
    # The prompt's last token opens every branch (a copy each): its position predicts the
    # completion's first token, and that prediction differs per completion.
    head = prompt_len - 1
    seg = _Segment(list(prompt[:head]), list(range(head)), [0] * head, [0] * head, [-1] * head, [])
    for k, (ids, _) in enumerate(example):
        branch = [prompt[-1]] + list(ids[prompt_len:])  # [1 + completion length]
        seg.ids += branch
        seg.positions += range(head, head + len(branch))
        seg.branches += [k + 1] * len(branch)
        seg.targets += branch[1:] + [0]
        seg.owners += [k] * (len(branch) - 1) + [-1]
        seg.lasts.append((k, len(seg.ids) - 1))  # an empty completion is scored at (its copy of) the prompt's end
    return [seg]


def collate_shared_prefix(examples: list[list[tuple[list[int], int]]], pad_id: int, row_tokens: int = 512, dtype: torch.dtype = torch.float32) -> SharedPrefixBatch:
    """Examples (each a list of (input_ids, prompt_len) slots sharing one prompt) -> SharedPrefixBatch.

    Sequences are numbered example-major (slot k of example i is sequence ``sum of earlier slot
    counts + k``), as ``tether.data.batches.collate`` numbers them. Rows hold about
    ``row_tokens`` tokens (``balanced_rows``); a segment longer than that is a row of its own.
    """
    segments: list[tuple[_Segment, int]] = []  # (segment, number of the example's first sequence)
    seq = 0
    for example in examples:
        for s in _segments(example):
            segments.append((s, seq))
        seq += len(example)
    # Equally full rows of about row_tokens: attention costs T^2 per row and every row is padded to the widest.
    rows = balanced_rows([len(seg.ids) for seg, _ in segments], row_tokens)
    fill = [sum(len(segments[s][0].ids) for s in row) for row in rows]
    width = max(fill)
    r_count = len(rows)
    input_ids = torch.full((r_count, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((r_count, width), dtype=torch.long)
    target_ids = torch.zeros((r_count, width), dtype=torch.long)
    sequence_ids = torch.full((r_count, width), -1, dtype=torch.long)
    segment_of = torch.arange(width).neg().sub(1).repeat(r_count, 1)  # [R, T]; a pad is its own segment (-t-1)
    branch_of = torch.zeros((r_count, width), dtype=torch.long)
    last_index = torch.zeros(seq, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for s in members:
            segment, first_seq = segments[s]
            n = len(segment.ids)
            span = slice(at, at + n)
            input_ids[r, span] = torch.tensor(segment.ids)
            position_ids[r, span] = torch.tensor(segment.positions)
            target_ids[r, span] = torch.tensor(segment.targets)
            owners = torch.tensor(segment.owners)
            sequence_ids[r, span] = torch.where(owners >= 0, owners + first_seq, owners)
            segment_of[r, span] = s
            branch_of[r, span] = torch.tensor(segment.branches)
            for k, offset in segment.lasts:
                last_index[first_seq + k] = r * width + at + offset
            at += n
    query_seg, key_seg = segment_of.unsqueeze(2), segment_of.unsqueeze(1)  # [R, T, 1], [R, 1, T]
    query_branch, key_branch = branch_of.unsqueeze(2), branch_of.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # [T, T], key s <= query t
    allowed = (query_seg == key_seg) & causal & ((key_branch == 0) | (key_branch == query_branch))  # [R, T, T]
    mask = torch.zeros((r_count, 1, width, width), dtype=dtype).masked_fill(~allowed.unsqueeze(1), torch.finfo(dtype).min)
    return SharedPrefixBatch(
        input_ids=input_ids, position_ids=position_ids, attention_mask=mask, target_ids=target_ids,
        loss_mask=sequence_ids >= 0, sequence_ids=sequence_ids, num_sequences=seq, last_index=last_index,
    )


__all__ = ["SharedPrefixBatch", "collate_shared_prefix"]
