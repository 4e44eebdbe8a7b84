"""The ledger: what went in, and what came out as read by a consumer independent of the worker.

Modelled on Jepsen's Kafka checker and Kafka's system tests. Every input is recorded with its
(partition, offset) from the broker's produce acknowledgement. A reader that is no member of
any group (``group_id=None``, from the beginning) reads the output and dead-letter topics:

- a result is matched to its input by the ``id`` it carries;
- a dead letter is matched by its ``source.partition`` / ``source.offset`` headers, never by its
  value, which the worker may cut short or leave empty.

An input with neither is lost; every output beyond the first for one input is a duplicate.
The dev broker's ListOffsets answers (high watermarks) are unreliable, so everything is counted
by consuming. The reader and the producer live on one event loop in a thread of their own, so a
test can look at the tally at any moment while it kills and restarts workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from models.demo.splits import demo_splits

T = TypeVar("T")
Headers = list[tuple[str, bytes]]
Coords = tuple[int, int]  # (partition, offset) of an input record

MAX_REQUEST_BYTES = 16 * 1024 * 1024  # room for the poison corpus's 10 MB value


@dataclass(frozen=True, slots=True)
class Topics:
    input: str
    output: str
    dlq: str
    group: str


@dataclass(frozen=True, slots=True)
class Message:
    """One input to send; ``id`` is the review id a result will carry (None: no result possible).
    ``partition``: where to send it (None: the producer's partitioner decides)."""

    id: str | None
    value: bytes | None = field(repr=False)
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Sent:
    id: str | None
    partition: int
    offset: int
    message: Message = field(repr=False)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    value: bytes
    headers: Headers

    def header(self, name: str) -> bytes | None:
        """The last header called ``name`` (the error headers come after the input's own)."""
        return next((v for k, v in reversed(self.headers) if k == name), None)

    @property
    def reason(self) -> str:
        return (self.header("error.reason") or b"").decode()


@dataclass
class Report:
    """The tally at one moment. ``duplicates``: outputs beyond one per input."""

    sent: int
    lost: list[Sent]
    duplicates: int
    results: int  # result records that match an input (repeats included)
    dead_letters: int  # dead letters that match an input (repeats included)
    unknown: int  # outputs that match no input of this ledger
    max_record_bytes: dict[str, int]  # per topic, key + value + headers of the largest record read
    result_ids: Counter[str] = field(repr=False)
    dead: dict[Coords, list[DeadLetter]] = field(repr=False)

    @property
    def summary(self) -> str:
        return (
            f"sent {self.sent}, lost {len(self.lost)}, duplicates {self.duplicates}, results "
            f"{self.results}, dead letters {self.dead_letters}, unknown {self.unknown}"
        )


def review_texts(n: int) -> list[str]:
    """``n`` real review texts (the shipped demo reviews, repeated when ``n`` is larger)."""
    splits = demo_splits()
    texts = [ex.text for ex in splits.train + splits.dev + splits.test]
    return list(itertools.islice(itertools.cycle(texts), n))


def reviews(n: int, prefix: str, *, start: int = 0, **fields: Any) -> list[Message]:
    """``n`` good reviews with unique ids ``{prefix}{i}``, keyed by id; ``fields`` go into each."""
    return [
        Message(rid, orjson.dumps({"id": rid, "text": text, **fields}), key=rid.encode())
        for i, text in enumerate(review_texts(n), start)
        for rid in [f"{prefix}{i}"]
    ]


def record_bytes(key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]) -> int:
    """What a record carries: key, value, header names and values (the batch framing excluded)."""
    return len(key or b"") + len(value or b"") + sum(len(k.encode()) + len(v or b"") for k, v in headers)


class Ledger:
    """Produce inputs and tally outputs; see the module docstring. Use as a context manager."""

    def __init__(self, brokers: str, topics: Topics) -> None:
        self.brokers, self.topics = brokers, topics
        self.lock = threading.Lock()
        self.by_id: dict[str, Sent] = {}
        self.by_coords: dict[Coords, Sent] = {}
        self.result_ids: Counter[str] = Counter()
        self.dead: dict[Coords, list[DeadLetter]] = {}
        self.max_bytes: dict[str, int] = {topics.output: 0, topics.dlq: 0}
        self.foreign_dead = 0  # dead letters from another input topic, or without coordinates
        self.garbage = 0  # results that are not JSON with an id
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="ledger", daemon=True)
        self.thread.start()
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.reader = self._call(self._start_reader())

    # --- the public side -------------------------------------------------------------------------

    def produce(self, messages: Sequence[Message], *, record: bool = True) -> list[Sent]:
        """Send ``messages`` and record where the broker put each (waits for every ack).
        ``record=False``: send only; the ledger does not expect them back (filler)."""
        sent = self._call(self._produce(messages))
        if not record:
            return sent
        with self.lock:
            for s in sent:
                if s.id is not None:
                    assert s.id not in self.by_id, f"id {s.id} sent twice: ids must be unique"
                    self.by_id[s.id] = s
                self.by_coords[(s.partition, s.offset)] = s
        return sent

    def report(self) -> Report:
        with self.lock:
            sent = list(self.by_coords.values())
            lost, duplicates, results, dead_letters = [], 0, 0, 0
            for s in sent:
                n_results = self.result_ids.get(s.id, 0) if s.id is not None else 0
                n_dead = len(self.dead.get((s.partition, s.offset), ()))
                results, dead_letters = results + n_results, dead_letters + n_dead
                if n_results + n_dead == 0:
                    lost.append(s)
                duplicates += max(0, n_results + n_dead - 1)
            unknown = (
                sum(c for i, c in self.result_ids.items() if i not in self.by_id)
                + sum(len(d) for c, d in self.dead.items() if c not in self.by_coords)
                + self.foreign_dead
                + self.garbage
            )
            return Report(
                sent=len(sent), lost=lost, duplicates=duplicates, results=results,
                dead_letters=dead_letters, unknown=unknown, max_record_bytes=dict(self.max_bytes),
                result_ids=Counter(self.result_ids), dead={c: list(d) for c, d in self.dead.items()},
            )  # fmt: skip

    def outputs(self) -> int:
        """Results and dead letters read so far, whatever they match (cheap: for progress checks)."""
        with self.lock:
            return self.result_ids.total() + sum(len(d) for d in self.dead.values()) + self.foreign_dead

    def wait(self, timeout_s: float, *, settle_s: float = 2.0) -> Report:
        """The report once nothing is lost (or ``timeout_s`` passed), after ``settle_s`` more for
        late duplicates to arrive."""
        deadline = time.monotonic() + timeout_s
        while self.report().lost and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(settle_s)
        return self.report()

    def wait_outputs(self, at_least: int, timeout_s: float) -> int:
        """Block until at least ``at_least`` outputs were read (or the time is up); how many."""
        deadline = time.monotonic() + timeout_s
        while (n := self.outputs()) < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        return n

    def close(self) -> None:
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._stop(), timeout_s=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- on the ledger's loop --------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 600) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _produce(self, messages: Sequence[Message]) -> list[Sent]:
        if self.producer is None:
            self.producer = AIOKafkaProducer(
                bootstrap_servers=self.brokers, acks="all", linger_ms=5, max_request_size=MAX_REQUEST_BYTES
            )
            await self.producer.start()
        futures = [
            await self.producer.send(
                self.topics.input, m.value, key=m.key, headers=list(m.headers), partition=m.partition
            )
            for m in messages
        ]
        metas = await asyncio.gather(*futures)
        return [Sent(m.id, md.partition, md.offset, m) for m, md in zip(messages, metas, strict=True)]

    async def _start_reader(self) -> asyncio.Task[None]:
        consumer = AIOKafkaConsumer(
            self.topics.output,
            self.topics.dlq,
            bootstrap_servers=self.brokers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_REQUEST_BYTES,
            fetch_max_bytes=4 * MAX_REQUEST_BYTES,
            metadata_max_age_ms=2000,  # see topics the worker creates late
        )
        await consumer.start()
        self.consumer = consumer
        return asyncio.ensure_future(self._read(consumer))

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            with self.lock:
                for tp, records in batch.items():
                    for r in records:
                        headers = list(r.headers or ())
                        size = record_bytes(r.key, r.value, headers)
                        self.max_bytes[tp.topic] = max(self.max_bytes.get(tp.topic, 0), size)
                        if tp.topic == self.topics.output:
                            self._tally_result(r.value)
                        else:
                            self._tally_dead(DeadLetter(r.value or b"", headers))

    def _tally_result(self, value: bytes | None) -> None:
        try:
            rid = orjson.loads(value or b"")["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.garbage += 1
            return
        self.result_ids[str(rid)] += 1

    def _tally_dead(self, dead: DeadLetter) -> None:
        topic, part, offset = (dead.header(h) for h in ("source.topic", "source.partition", "source.offset"))
        if topic != self.topics.input.encode() or part is None or offset is None:
            self.foreign_dead += 1
            return
        self.dead.setdefault((int(part), int(offset)), []).append(dead)

    async def _stop(self) -> None:
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
