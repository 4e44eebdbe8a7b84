"""Fakes for the pipeline and scheduler unit tests: a character-level model, a publisher, records."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry

from models.engine import EngineInfo, Prediction, Tokenised
from schemas.messages import Headers
from worker.metrics import Metrics
from worker.pipeline import BatchProcessor, MicroBatch, Outgoing, Record, Topics
from worker.scheduler import BatchScheduler


class FakeClassifier:
    """Positive when the text contains 好; raises on texts containing 'boom'."""

    info = EngineInfo("fake", "1", "sequence-classifier", ("negative", "positive"), 16, "cpu", "float32")
    max_batch_tokens = 100
    max_batch_size = 10

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate: threading.Event | None = None  # when set, each call waits for it to open

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        """One 'token' per character, code points as ids, cut at max_length."""
        n = self.info.max_length
        return Tokenised([[ord(c) for c in t[:n]] for t in texts], [len(t) > n for t in texts])

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        texts = ["".join(map(chr, ids)) for ids in tok.ids]
        self.calls.append(texts)
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if any("boom" in t for t in texts):
            raise RuntimeError("kernel exploded")
        return [
            Prediction(int("好" in t), (0.2, 0.8) if "好" in t else (0.9, 0.1), cut, len(t))
            for t, cut in zip(texts, tok.truncated, strict=True)
        ]

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return self.classify_tokenised(self.tokenise(texts))

    def warm_up(self) -> float:
        return 0.0

    def health(self) -> bool:
        return True


class FakePublisher:
    def __init__(self, fail_topic: str | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, Headers]] = []
        self.fail_topic = fail_topic

    async def send_many(self, topic: str, messages: Sequence[Outgoing]) -> list[Awaitable[Any]]:
        """One shared future for the call, as the real publisher has one per partition."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        for key, value, headers in messages:
            self.sent.append((topic, key, value, headers))
        if topic == self.fail_topic:
            fut.set_exception(ConnectionError("broker gone"))
        else:
            fut.set_result(len(self.sent))
        return [fut] * len(messages)


def record(offset: int, value: bytes | None, key: bytes | None = b"k") -> Record:
    return Record("reviews", 0, offset, key, value, [("h", b"v")], 1_000)


def make(publisher: FakePublisher, registry: CollectorRegistry) -> tuple[BatchProcessor, FakeClassifier]:
    model = FakeClassifier()
    proc = BatchProcessor(
        model,
        publisher,
        Topics("out", "dlq"),
        Metrics.create(registry),
        ThreadPoolExecutor(1),
        max_message_bytes=200,
        clock_ms=lambda: 3_000,
    )
    return proc, model


class Run:
    """A scheduler over ``proc``, recording which offsets were acked and what was fatal."""

    def __init__(self, proc: BatchProcessor, *, max_in_flight: int = 2, max_batch_tokens: int = 100) -> None:
        self.acked: list[int] = []
        self.fatal: list[tuple[MicroBatch, BaseException]] = []
        self.scheduler = BatchScheduler(
            proc,
            proc.classifier,
            proc.metrics,
            ThreadPoolExecutor(1),
            max_in_flight=max_in_flight,
            max_batch_tokens=max_batch_tokens,
            on_fatal=lambda batch, exc: self.fatal.append((batch, exc)),
        )

    async def submit(self, records: Sequence[Record], closed_by: str = "wait") -> None:
        acks = [lambda off=r.offset: self.acked.append(off) for r in records]
        await self.scheduler.submit(records, acks, closed_by)

    async def all(self, records: Sequence[Record]) -> None:
        await self.submit(records)
        await self.scheduler.drain()


def handle(proc: BatchProcessor, records: Sequence[Record], **kw: int) -> Run:
    run = Run(proc, **kw)
    asyncio.run(run.all(records))
    return run
