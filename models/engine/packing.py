"""Cut a call's tokenised texts into forward passes, and pack each pass into one padding-free stream
for the packed-attention backbone.

A batch of texts becomes one row of ``sum(lengths)`` tokens. Positions restart at 0 for every
text and the attention sees one text at a time (``cu_seqlens``), so each text is computed as if
it were alone: no pad token costs a FLOP and nothing depends on the batch's longest text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import torch


@dataclass(frozen=True, slots=True)
class Packed:
    input_ids: torch.Tensor  # [1, T] int64
    position_ids: torch.Tensor  # [1, T] int64, restarting at 0 for each text
    cu_seqlens: torch.Tensor  # [n + 1] int32: text i is tokens cu_seqlens[i]:cu_seqlens[i+1]
    max_len: int
    pool_index: torch.Tensor  # [n] int64: the token (in 0..T) whose hidden state is pooled

    def to(self, device: torch.device) -> Packed:
        if device.type == "cpu":
            return self

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.pin_memory().to(device, non_blocking=True)

        return Packed(
            move(self.input_ids), move(self.position_ids), move(self.cu_seqlens), self.max_len,
            move(self.pool_index),
        )  # fmt: skip


def pack(seqs: Sequence[Sequence[int]], pool_offsets: Sequence[int]) -> Packed:
    """``pool_offsets[i]`` is the pooled token's index inside text ``i`` (0-based)."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("pack() needs at least one text and no empty token lists")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    starts = torch.cumsum(lengths, 0) - lengths
    total = int(lengths.sum())
    input_ids = torch.tensor(list(chain.from_iterable(seqs)), dtype=torch.int64)
    positions = torch.arange(total, dtype=torch.int64) - torch.repeat_interleave(starts, lengths)
    cu_seqlens = torch.zeros(len(seqs) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    return Packed(
        input_ids=input_ids[None],
        position_ids=positions[None],
        cu_seqlens=cu_seqlens,
        max_len=int(lengths.max()),
        pool_index=starts + torch.tensor(pool_offsets, dtype=torch.int64),
    )


def last_token(seq: Sequence[int]) -> int:
    """Qwen3-Embedding's pooling: the last real token (with its tokenizer, the appended EOS)."""
    return len(seq) - 1


def last_non_pad(seq: Sequence[int], pad_id: int) -> int:
    """transformers' ``Qwen3ForSequenceClassification`` rule: the rightmost token that is not pad.

    A text of nothing but pad tokens pools position 0, as ``argmax`` over zeros does there.
    """
    for i in range(len(seq) - 1, -1, -1):
        if seq[i] != pad_id:
            return i
    return 0


def plan_batches(lengths: Sequence[int], *, max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into forward passes, shortest texts first.

    A pass holds at most ``max_batch_size`` texts whose lengths sum to at most ``max_batch_tokens``:
    packed, a pass computes exactly its real tokens, so that sum is its cost (the same count the
    worker's micro-batches are cut by, so a micro-batch is one pass). Sorting keeps texts of equal
    length together, where the packed attention batches them. A text longer than the whole budget
    still gets a pass of its own rather than being dropped.
    """
    if max_batch_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_batch_tokens and max_batch_size must be positive")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        if current and (len(current) == max_batch_size or tokens + lengths[i] > max_batch_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches
