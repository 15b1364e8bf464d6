"""Packing layout: first-fit-decreasing bins, restarting positions, boundaries and masks."""

from __future__ import annotations

import pytest
import torch

from agentrl.trainer.packing import (
    block_diagonal_causal_mask,
    first_fit_decreasing,
    pack_micro_batches,
    pad_micro_batches,
)


def test_first_fit_decreasing_by_hand():
    # Longest first: 7 -> bin 0, 6 -> bin 1, 5 -> bin 2, 4 -> bin 1 (full), 3 -> bin 0 (full).
    assert first_fit_decreasing([5, 7, 3, 4, 6], 10) == [[1, 2], [4, 3], [0]]
    with pytest.raises(ValueError, match=r"sequences \[1\] are longer than token_budget=6"):
        first_fit_decreasing([5, 7], 6)


def test_packed_row_layout():
    token_ids = [[11, 12, 13], [21, 22, 23, 24, 25], [31, 32]]
    per_token = {"loss_mask": [[0, 1, 1], [0, 0, 1, 1, 1], [0, 1]]}
    first, second = pack_micro_batches(token_ids, 8, per_token)
    assert first.sample_indices == [1, 0] and second.sample_indices == [2]
    assert first.input_ids.tolist() == [[21, 22, 23, 24, 25, 11, 12, 13]]
    assert first.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert first.seq_index.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]
    assert first.cu_seqlens.tolist() == [0, 5, 8] and first.cu_seqlens.dtype == torch.int32
    assert first.per_token["loss_mask"].tolist() == [[0, 0, 1, 1, 1, 0, 1, 1]]
    assert first.num_real_tokens == 8
    with pytest.raises(ValueError, match=r"loss_mask\[1\] has 2 values for 5 tokens"):
        pack_micro_batches(token_ids, 8, {"loss_mask": [[0, 1, 1], [0, 1], [0, 1]]})


def test_padded_layout_marks_padding():
    (batch,) = pad_micro_batches([[1, 2, 3], [4]], 2, {"loss_mask": [[0, 1, 1], [1]]})
    assert batch.input_ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch.seq_index.tolist() == [[0, 0, 0], [1, -1, -1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.per_token["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch.num_real_tokens == 4


def test_block_diagonal_causal_mask():
    mask = block_diagonal_causal_mask(torch.tensor([0, 2, 5], dtype=torch.int32), torch.float32)
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert mask.min() == torch.finfo(torch.float32).min
