"""Which offsets may be committed, when records finish out of order.

Records of a partition are taken in offset order but finish in any order (several micro-batches
run at once). An offset is committable only when it and every offset taken before it on the
same partition have finished: the commit point is one past the longest finished run from the
oldest unfinished record. A crash therefore repeats unfinished work and never skips it.

Plain data, no Kafka client: unit-tested on its own.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)  # a partition: aiokafka's TopicPartition, or anything hashable


@dataclass(slots=True)
class _Partition:
    taken: deque[int] = field(default_factory=deque)  # in the order taken (ascending)
    finished: set[int] = field(default_factory=set)
    next_commit: int | None = None  # one past the last offset known finished in order
    committed: int | None = None  # what the broker last accepted


class OffsetBook(Generic[P]):
    def __init__(self) -> None:
        self._parts: dict[P, _Partition] = {}

    def take(self, partition: P, offset: int) -> None:
        part = self._parts.setdefault(partition, _Partition())
        if part.taken and offset <= part.taken[-1]:
            raise ValueError(f"offset {offset} taken after {part.taken[-1]} on {partition!r}")
        part.taken.append(offset)

    def take_many(self, partition: P, offsets: list[int]) -> None:
        """:meth:`take` each of ``offsets`` (ascending), in one call."""
        if not offsets:
            return
        part = self._parts.setdefault(partition, _Partition())
        last = part.taken[-1] if part.taken else -1
        if offsets[0] <= last or any(map(operator.ge, offsets, offsets[1:])):
            raise ValueError(f"offsets {offsets} not ascending after {last} on {partition!r}")
        part.taken.extend(offsets)

    def finish(self, partition: P, offset: int) -> None:
        """Mark one taken offset finished (its result acknowledged by the broker)."""
        self.finish_many(partition, (offset,))

    def finish_many(self, partition: P, offsets: Iterable[int]) -> None:
        """Mark taken offsets finished (their results acknowledged by the broker)."""
        part = self._parts.get(partition)
        if part is None:  # forgotten by a revocation meanwhile: nothing to commit for it
            return
        part.finished.update(offsets)
        taken, finished = part.taken, part.finished
        while taken and taken[0] in finished:
            done = taken.popleft()
            finished.discard(done)
            part.next_commit = done + 1

    def to_commit(self) -> dict[P, int]:
        """The offsets to commit now: each partition whose commit point moved since the last commit."""
        return {
            p: part.next_commit
            for p, part in self._parts.items()
            if part.next_commit is not None and part.next_commit != part.committed
        }

    def committed(self, offsets: dict[P, int]) -> None:
        """Record that the broker accepted ``offsets``."""
        for p, offset in offsets.items():
            part = self._parts.get(p)
            if part is not None:
                part.committed = offset

    def done_up_to(self, partition: P) -> int | None:
        """Where the unfinished work on ``partition`` starts (None if nothing was taken from it).

        One past the last offset finished in order; before any finished, the first offset taken
        (what came before it was finished by whoever committed it).
        """
        part = self._parts.get(partition)
        if part is None:
            return None
        if part.taken:
            return part.taken[0]
        return part.next_commit

    def unfinished(self) -> int:
        return sum(len(part.taken) for part in self._parts.values())

    def forget(self, partitions: Iterable[P]) -> None:
        """Drop what is known of ``partitions`` (revoked: their next owner starts from the commit)."""
        for p in partitions:
            self._parts.pop(p, None)
