"""OffsetBook: what may be committed when records finish out of order."""

from __future__ import annotations

import pytest

from worker.kafka.offsets import OffsetBook


def book_with(partition: str, offsets: list[int]) -> OffsetBook[str]:
    book: OffsetBook[str] = OffsetBook()
    for offset in offsets:
        book.take(partition, offset)
    return book


def test_nothing_is_committable_until_the_oldest_record_finishes() -> None:
    book = book_with("p0", [10, 11, 12])
    book.finish("p0", 12)
    book.finish("p0", 11)
    assert book.to_commit() == {}, "10 is not finished: committing 12 would skip it after a crash"
    book.finish("p0", 10)
    assert book.to_commit() == {"p0": 13}


def test_the_commit_point_stops_at_the_first_unfinished_offset() -> None:
    book = book_with("p0", [0, 1, 2, 3, 4])
    for offset in (0, 1, 3, 4):
        book.finish("p0", offset)
    assert book.to_commit() == {"p0": 2}
    assert book.done_up_to("p0") == 2


def test_gaps_in_offsets_do_not_block_the_commit() -> None:
    """Offsets need not be consecutive (compacted topics, transaction markers)."""
    book = book_with("p0", [5, 9, 20])
    for offset in (20, 9, 5):
        book.finish("p0", offset)
    assert book.to_commit() == {"p0": 21}


def test_partitions_are_independent() -> None:
    book: OffsetBook[str] = OffsetBook()
    book.take("a", 0)
    book.take("b", 0)
    book.take("b", 1)
    book.finish("b", 0)
    assert book.to_commit() == {"b": 1}
    assert book.unfinished() == 2


def test_what_was_committed_is_not_offered_again() -> None:
    book = book_with("p0", [0, 1])
    book.finish("p0", 0)
    book.committed(book.to_commit())
    assert book.to_commit() == {}
    book.finish("p0", 1)
    assert book.to_commit() == {"p0": 2}


def test_done_up_to_before_anything_finished_is_the_first_offset_taken() -> None:
    book = book_with("p0", [40, 41])
    assert book.done_up_to("p0") == 40
    assert book.done_up_to("p1") is None


def test_a_forgotten_partition_ignores_late_finishes() -> None:
    book = book_with("p0", [0])
    book.forget(["p0"])
    book.finish("p0", 0)  # a batch finishing after its partition was revoked
    assert book.to_commit() == {} and book.unfinished() == 0


def test_offsets_must_be_taken_in_order() -> None:
    book = book_with("p0", [3])
    with pytest.raises(ValueError, match="offset 2 taken after 3"):
        book.take("p0", 2)
