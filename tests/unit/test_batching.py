"""The engine's forward passes: sorted, within the count cap and the budget of REAL tokens."""

from __future__ import annotations

import pytest

from models.engine.packing import plan_batches
from worker.batching.scheduler import cut_by_tokens


def test_every_index_once_sorted_within_budget_and_cap() -> None:
    lengths = [5, 100, 3, 40, 40, 7, 12, 90, 1, 33]
    batches = plan_batches(lengths, max_batch_tokens=120, max_batch_size=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths)
    for b in batches:
        assert len(b) <= 3
        assert sum(lengths[i] for i in b) <= 120


def test_the_budget_counts_real_tokens_not_longest_times_count() -> None:
    # 1 + 1 + 1 + 97 = 100 real tokens fit a budget of 100; padded they would be 4 × 97 = 388
    assert plan_batches([97, 1, 1, 1], max_batch_tokens=100, max_batch_size=8) == [[1, 2, 3, 0]]


def test_a_text_over_the_budget_gets_its_own_batch() -> None:
    assert plan_batches([500, 2, 2], max_batch_tokens=100, max_batch_size=8) == [[1, 2], [0]]


def test_budget_cuts_before_count() -> None:
    # 4 texts of 10 tokens: budget 25 allows 2 per batch even though the cap is 8
    assert plan_batches([10] * 4, max_batch_tokens=25, max_batch_size=8) == [[0, 1], [2, 3]]


def test_a_micro_batch_within_the_budget_is_one_forward_pass() -> None:
    """The worker cuts micro-batches by the same count (cut_by_tokens, arrival order): whatever it
    lets through, the engine runs in one pass."""
    lengths = [30, 7, 120, 1, 64, 64, 9, 200, 3, 55, 18, 90]
    for budget in (200, 256, 300, 1000):
        for run in cut_by_tokens(lengths, budget):
            part = [lengths[i] for i in run]
            assert len(plan_batches(part, max_batch_tokens=budget, max_batch_size=len(part))) == 1


def test_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        plan_batches([1], max_batch_tokens=0, max_batch_size=1)
