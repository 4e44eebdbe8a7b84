"""Fakes for the pipeline and scheduler unit tests: a character-level model, a publisher, records."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka.errors import MessageSizeTooLargeError
from prometheus_client import CollectorRegistry

from models.engine.classifier import EngineInfo, Prediction, Tokenised
from schemas.errors import ModelUnavailable
from schemas.messages import Headers
from worker.batching.pipeline import BatchProcessor, Limits, Message, MicroBatch, Outgoing, Record, Topics
from worker.batching.scheduler import BatchScheduler
from worker.metrics import Metrics


class FakeClassifier:
    """Positive when the text contains 好; raises on texts containing 'boom'. Like a model behind
    an embeddings server: raises ModelUnavailable on texts containing 'choke' (the server fails on
    them alone) and on every call while ``away`` (the server is down; the probe fails too)."""

    info = EngineInfo("fake", "1", "sequence-classifier", ("negative", "positive"), 16, "cpu", "float32")
    max_batch_tokens = 100
    max_batch_size = 10

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.gate: threading.Event | None = None  # when set, each call waits for it to open
        self.broken = False  # every call fails, the health probe too (a dead device)
        self.away = False  # every call fails with ModelUnavailable, the health probe too
        self.probes = 0

    def tokenise(self, texts: Sequence[str]) -> Tokenised:
        """One 'token' per character, code points as ids, cut at max_length."""
        if any("untokenisable" in t for t in texts):
            raise ValueError("the tokenizer chokes")
        n = self.info.max_length
        return Tokenised([[ord(c) for c in t[:n]] for t in texts], [len(t) > n for t in texts])

    def classify_tokenised(self, tok: Tokenised) -> list[Prediction]:
        texts = ["".join(map(chr, ids)) for ids in tok.ids]
        self.calls.append(texts)
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.away:
            raise ModelUnavailable("embedding server http://emb/v1 failed 5 time(s); last: connect")
        if any("choke" in t for t in texts):
            raise ModelUnavailable("embedding server http://emb/v1 failed 5 time(s); last: 500")
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
        self.probes += 1
        return not self.broken and not self.away


class FakePublisher:
    """Records what is sent. ``failures[topic]``: exceptions the next calls for ``topic`` fail with,
    one per call, in order; ``limits[topic]``: records larger than this many bytes fail as too large."""

    def __init__(
        self, failures: dict[str, list[BaseException]] | None = None, limits: dict[str, int] | None = None
    ) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, Headers]] = []
        self.failures = failures or {}
        self.limits = limits or {}
        self.calls = 0

    def limit(self, topic: str) -> int:
        """What the publisher would have read from the broker: none known here, so no cut."""
        return 1 << 30

    async def send_many(self, topic: str, messages: Sequence[Outgoing]) -> list[Awaitable[Any]]:
        """One shared future for the call, as the real publisher has one per partition."""
        self.calls += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        futures: list[Awaitable[Any]] = []
        failing = self.failures.get(topic)
        error = failing.pop(0) if failing else None
        for key, value, headers in messages:
            size = len(key or b"") + len(value) + sum(len(k) + len(v) for k, v in headers)
            if size > self.limits.get(topic, size):
                big: asyncio.Future[int] = loop.create_future()
                big.set_exception(MessageSizeTooLargeError(f"{size} bytes"))
                futures.append(big)
                continue
            if error is None:
                self.sent.append((topic, key, value, headers))
            futures.append(fut)
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(len(self.sent))
        return futures


def record(offset: int, value: bytes | None, key: bytes | None = b"k") -> Message:
    return Message("reviews", 0, offset, key, value, [("h", b"v")], 1_000)


def make(
    publisher: FakePublisher, registry: CollectorRegistry, **limits: Any
) -> tuple[BatchProcessor, FakeClassifier]:
    """A processor over ``publisher``; its backoff sleeps are recorded in ``proc.slept``, not slept."""
    model = FakeClassifier()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0)

    proc = BatchProcessor(
        model,
        publisher,
        Topics("out", "dlq"),
        Metrics.create(registry),
        ThreadPoolExecutor(1),
        limits=Limits(**{"max_message_bytes": 200, **limits}),
        clock_ms=lambda: 3_000,
        sleep=sleep,
    )
    proc.slept = slept  # type: ignore[attr-defined]
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
        await self.scheduler.submit(records, self.ack, closed_by)

    def ack(self, records: Sequence[Record]) -> None:
        self.acked.extend(r.offset for r in records)

    async def all(self, records: Sequence[Record]) -> None:
        await self.submit(records)
        await self.scheduler.drain()


def handle(proc: BatchProcessor, records: Sequence[Record], **kw: int) -> Run:
    run = Run(proc, **kw)
    asyncio.run(run.all(records))
    return run
