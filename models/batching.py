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
