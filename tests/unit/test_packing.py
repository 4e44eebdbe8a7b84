"""Packing several tokenised texts into one padding-free row."""

from __future__ import annotations

import pytest
import torch

from models.engine.packing import last_non_pad, last_token, pack

PAD = 9


def test_pack_restarts_positions_and_marks_boundaries() -> None:
    seqs = [[1, 2, 3], [4], [5, 6]]
    p = pack(seqs, [last_token(s) for s in seqs])
    assert p.input_ids.tolist() == [[1, 2, 3, 4, 5, 6]]
    assert p.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert p.cu_seqlens.tolist() == [0, 3, 4, 6] and p.cu_seqlens.dtype == torch.int32
    assert p.max_len == 3
    assert p.pool_index.tolist() == [2, 3, 5]


def test_sequence_classifier_rule_pools_the_rightmost_non_pad_token() -> None:
    assert last_non_pad([5, 6, PAD], PAD) == 1  # EOS (= pad) appended: the last text token
    assert last_non_pad([5, PAD, 6], PAD) == 2
    assert last_non_pad([PAD, PAD], PAD) == 0  # transformers' argmax over zeros


def test_pack_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one text"):
        pack([], [])
    with pytest.raises(ValueError, match="no empty"):
        pack([[1], []], [0, 0])
