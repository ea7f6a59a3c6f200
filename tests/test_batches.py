"""TokenBatch layouts: padded and packed batches describe the same targets and masks."""

import torch

from tether.data.batches import collate, pack_batch, pad_batch

SEQS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]
PLENS = [2, 1, 3]


def test_padded_targets_and_mask_by_hand():
    b = pad_batch(SEQS, PLENS, pad_id=0)
    # Sequence 0: positions 0..3 predict 6,7,8,9; prompt_len 2 -> targets 7,8,9 (positions 1..3) train.
    assert b.target_ids[0].tolist() == [6, 7, 8, 9, 0]
    assert b.loss_mask[0].tolist() == [False, True, True, True, False]
    # Sequence 1: prompt_len 1 -> position 0 predicts token 4, a completion token.
    assert b.loss_mask[1].tolist() == [True, False, False, False, False]
    # Sequence 2: prompt_len 3 == length -> nothing to train.
    assert not b.loss_mask[2].any()
    assert b.attention_mask.tolist()[1] == [1, 1, 0, 0, 0]
    assert b.loss_tokens_per_sequence().tolist() == [3.0, 1.0, 0.0]


def test_packed_matches_padded_per_sequence():
    padded = pad_batch(SEQS, PLENS, pad_id=0)
    packed = pack_batch(SEQS, PLENS, pad_id=0, row_tokens=8)
    assert packed.attention_mask is None
    # 10 tokens need ceil(10 / 8) = 2 rows; longest first into the emptiest row: [5] and [3, 2],
    # so both rows are 5 wide (first fit would have made rows [5, 3] and [2], 8 wide).
    assert packed.input_ids.shape == (2, 5)
    for b in (padded, packed):
        values = torch.arange(b.target_ids.numel(), dtype=torch.float).view_as(b.target_ids)
        gathered = {}
        for s in range(3):
            sel = (b.sequence_ids == s) & b.loss_mask
            gathered[s] = b.target_ids[sel].tolist()
        assert gathered == {0: [7, 8, 9], 1: [4], 2: []}
        assert b.per_sequence(values * 0 + 1).tolist() == [3.0, 1.0, 0.0]
    # Position ids restart at 0 for every packed sequence.
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, 3, 4]]


def test_balanced_rows():
    """Rows come out equally full; an item of row_tokens or more is a row of its own."""
    from tether.data.batches import balanced_rows

    assert balanced_rows([4, 4, 4, 4], 8) == [[0, 2], [1, 3]]
    assert sorted(map(sorted, balanced_rows([6, 5, 3, 2], 8))) == [[0, 3], [1, 2]]  # fills 8 and 8
    assert balanced_rows([10, 3, 3], 8) == [[0], [1, 2]]
    assert balanced_rows([1], 8) == [[0]]


def test_collate_is_example_major():
    pair_a = [([1, 2, 3], 1), ([1, 2, 4, 5], 1)]
    pair_b = [([7, 8], 1), ([7, 9], 1)]
    b = collate([pair_a, pair_b], pad_id=0)
    assert b.num_sequences == 4
    assert b.input_ids[:, 0].tolist() == [1, 1, 7, 7]
    assert b.input_ids[1, :4].tolist() == [1, 2, 4, 5]  # rejected of the first pair at index 1


def test_collate_packs_at_the_width_with_fewer_positions():
    """collate(pack=True) builds rows at the longest sequence's width and at row_tokens and keeps the
    one with fewer row positions (balanced_rows by hand):

    * lengths 5, 5, 4, 4, row_tokens 16: at width 5 every sequence is a row of its own, 4 x 5 = 20
      positions; at 16, two rows (5 + 4 each), 2 x 9 = 18: the wide rows win.
    * lengths 7, 6, 6, row_tokens 12: at width 7 the 7 is alone and the two 6s share ceil(12 / 7) = 2
      rows, 3 x 7 = 21; at 12, rows [7] and [6, 6], 2 x 12 = 24: the narrow rows win.
    """
    def seqs(lengths):
        return [[(list(range(1, n + 1)), 1)] for n in lengths]

    assert tuple(collate(seqs([5, 5, 4, 4]), pad_id=0, pack=True, row_tokens=16).input_ids.shape) == (2, 9)
    assert tuple(collate(seqs([7, 6, 6]), pad_id=0, pack=True, row_tokens=12).input_ids.shape) == (3, 7)
