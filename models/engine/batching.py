"""Cut tokenised texts into batches by a token budget and a count cap (TEI's queue rule).

Texts are sorted by length so each batch pads little; a batch's cost is what it occupies once
padded, ``longest × count``, which is what the GPU actually computes over.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], *, max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into batches, shortest texts first.

    A text longer than the whole budget still gets a batch of its own rather than being dropped.
    """
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be positive")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending, so the newcomer is the longest of the batch
        if current and (len(current) == max_batch_size or (len(current) + 1) * lengths[i] > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def padding_fraction(lengths: Sequence[int], *, max_batch_tokens: int, max_batch_size: int) -> float:
    """Share of the padded token slots (``longest × count`` per planned batch) that are padding.

    The budget is counted padded, so this is the share of it spent on nothing: how well length
    sorting packs the texts given. The packed forward pass computes real tokens only.
    """
    if not lengths:
        return 0.0
    padded = sum(
        len(batch) * max(lengths[i] for i in batch)
        for batch in plan_batches(lengths, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size)
    )
    return 1.0 - sum(lengths) / padded


def cut_by_tokens(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive runs of ``lengths`` (arrival order) whose sums stay within ``budget``.

    A run closes before the text that would take it over; a text over the budget on its own
    still gets a run. Zero lengths (messages with nothing to tokenise) cost nothing.
    """
    if budget < 1:
        raise ValueError("budget must be positive")
    runs: list[range] = []
    start, total = 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > budget:
            runs.append(range(start, i))
            start, total = i, 0
        total += n
    if start < len(lengths):
        runs.append(range(start, len(lengths)))
    return runs
