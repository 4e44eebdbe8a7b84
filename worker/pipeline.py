"""What happens to one micro-batch: classify off the event loop, publish, account.

Kept free of faust so it can be unit-tested with fakes: it sees raw records (bytes in, bytes
out) and a :class:`Publisher` whose ``send_many`` returns, per message, a future of the
broker's acknowledgement.
The contract with the caller: when :meth:`BatchProcessor.process` returns, every record of the
batch has an acknowledged result or dead letter, so its offsets may be committed. Errors it can
handle (bad input, model failure) become dead letters; errors it cannot (the broker refusing
writes) are raised as :class:`PublishError`, and the caller must stop before committing.

Records are decoded (:meth:`BatchProcessor.decode`) and tokenised before they are cut into
micro-batches (``worker/scheduler.py``), so a :class:`MicroBatch` carries its token ids and the
model never tokenises again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from models.batching import padding_fraction
from models.engine import Classifier, Prediction, Tokenised
from schemas.errors import InvalidMessage, ModelError, SentimentError
from schemas.messages import (
    Headers,
    ModelRef,
    Review,
    dead_letter_headers,
    decode_review,
    encode_result,
    now_ms,
)
from worker.logs import where
from worker.metrics import Metrics

log = logging.getLogger(__name__)


class PublishError(SentimentError):
    """The broker did not acknowledge a result or dead letter; offsets must not be committed."""


@dataclass(slots=True)  # not frozen: its __init__ runs per message, and frozen costs twice as much
class Record:
    """One consumed message, as the pipeline needs it (treated as read-only)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int


Outgoing = tuple[bytes | None, bytes, Headers]  # key, value, headers


class Publisher(Protocol):
    async def send_many(self, topic: str, messages: Sequence[Outgoing]) -> list[Awaitable[Any]]:
        """Queue ``messages`` for ``topic``; one future per message (messages may share one)."""
        ...


@dataclass(frozen=True, slots=True)
class Topics:
    output: str
    dlq: str


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """Records cut for one model call, with what was decoded and tokenised for them.

    ``decoded[i]`` is the review of ``records[i]`` or why it is dead-lettered; ``tokens`` holds
    the token ids of the valid reviews, in record order. ``closed_by`` is the limit that closed
    the batch: ``count``, ``tokens`` or ``wait``.
    """

    records: Sequence[Record]
    decoded: Sequence[Review | InvalidMessage]
    tokens: Tokenised
    closed_by: str


class BatchProcessor:
    def __init__(
        self,
        classifier: Classifier,
        publisher: Publisher,
        topics: Topics,
        metrics: Metrics,
        executor: Executor,
        *,
        max_message_bytes: int,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.classifier = classifier
        self.publisher = publisher
        self.topics = topics
        self.metrics = metrics
        self.executor = executor
        self.max_message_bytes = max_message_bytes
        self.clock_ms = clock_ms
        info = classifier.info
        self.model_ref = ModelRef(name=info.name, version=info.version)
        self.labels = info.labels

    def decode(self, records: Sequence[Record]) -> list[Review | InvalidMessage]:
        """Each record's review, or the reason it will be dead-lettered (size is checked first)."""
        out: list[Review | InvalidMessage] = []
        for rec in records:
            try:
                out.append(decode_review(rec.value, max_bytes=self.max_message_bytes))
            except InvalidMessage as exc:
                out.append(exc)
        return out

    async def process(self, batch: MicroBatch) -> None:
        """Handle a batch completely; see the module docstring for the guarantee."""
        valid = [
            (rec, r) for rec, r in zip(batch.records, batch.decoded, strict=True) if isinstance(r, Review)
        ]
        dead = [
            (rec, r)
            for rec, r in zip(batch.records, batch.decoded, strict=True)
            if isinstance(r, InvalidMessage)
        ]
        predictions = await self._classify(batch.tokens)
        results: list[Outgoing] = []
        on_acks: list[Callable[[], None]] = []
        ts_out = self.clock_ms()
        for (rec, review), pred in zip(valid, predictions, strict=True):
            if isinstance(pred, InvalidMessage):
                dead.append((rec, pred))
                continue
            ts_in = review.ts if review.ts is not None else rec.timestamp_ms
            value = encode_result(
                review,
                labels=self.labels,
                probabilities=pred.probabilities,
                truncated=pred.truncated,
                model=self.model_ref,
                ts_in=ts_in,
                ts_out=ts_out,
            )
            results.append((rec.key, value, rec.headers))
            on_acks.append(self._on_result(ts_in, self.labels[pred.label_id], pred.truncated))
        futures = await self.publisher.send_many(self.topics.output, results) if results else []
        if dead:
            futures += await self.publisher.send_many(
                self.topics.dlq, [self._dead_letter(r, e) for r, e in dead]
            )
            on_acks += [self._on_dead(error) for _, error in dead]
        await self._await_acks(list(zip(futures, on_acks, strict=True)))

    async def _classify(self, tok: Tokenised) -> list[Prediction | InvalidMessage]:
        """Run the model in its thread; a failing batch is retried text by text to isolate it."""
        if not tok.ids:
            return []
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        began: list[float] = []

        def run() -> list[Prediction]:
            began.append(time.perf_counter())
            self.metrics.queue_wait.observe(began[0] - started)  # waited for the model thread
            return self.classifier.classify_tokenised(tok)

        try:
            preds: list[Prediction | InvalidMessage] = list(await loop.run_in_executor(self.executor, run))
        except Exception as exc:
            log.warning("model failed on a batch of %d (%r); retrying one by one", len(tok.ids), exc)
            preds = [await self._classify_one(loop, tok.take([i])) for i in range(len(tok.ids))]
        if began:
            self.metrics.model_batch_latency.observe(time.perf_counter() - began[0])
        lengths = [len(ids) for ids in tok.ids]
        self.metrics.batch_reviews.observe(len(lengths))
        self.metrics.batch_tokens.observe(sum(lengths))
        self.metrics.padding_fraction.observe(
            padding_fraction(
                lengths,
                max_batch_tokens=self.classifier.max_batch_tokens,
                max_batch_size=self.classifier.max_batch_size,
            )
        )
        return preds

    async def _classify_one(
        self, loop: asyncio.AbstractEventLoop, tok: Tokenised
    ) -> Prediction | InvalidMessage:
        try:
            [pred] = await loop.run_in_executor(self.executor, self.classifier.classify_tokenised, tok)
            return pred
        except Exception as exc:
            return ModelError(f"model failed: {type(exc).__name__}: {exc}")

    def _dead_letter(self, rec: Record, exc: InvalidMessage) -> Outgoing:
        """The single place dead-letter decisions are made and logged."""
        log.warning(
            "dead-lettering %s[%d]@%d: %s: %s", rec.topic, rec.partition, rec.offset, exc.reason, exc,
            extra=where(rec.topic, rec.partition, rec.offset),
        )  # fmt: skip
        headers = dead_letter_headers(
            exc, topic=rec.topic, partition=rec.partition, offset=rec.offset, original=rec.headers
        )
        return rec.key, rec.value or b"", headers

    def _on_result(self, ts_in: int, label: str, truncated: bool) -> Callable[[], None]:
        def done() -> None:
            self.metrics.messages_out.inc()
            self.metrics.results_by_label.labels(label=label).inc()
            if truncated:
                self.metrics.truncated.inc()
            self.metrics.end_to_end_latency.observe(max(0, self.clock_ms() - ts_in) / 1000)

        return done

    def _on_dead(self, exc: InvalidMessage) -> Callable[[], None]:
        return lambda: self.metrics.dead_letters.labels(reason=exc.reason).inc()

    async def _await_acks(self, pending: Sequence[tuple[Awaitable[Any], Callable[[], None]]]) -> None:
        results = await asyncio.gather(*(fut for fut, _ in pending), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for result, (_, on_ack) in zip(results, pending, strict=True):
            if not isinstance(result, BaseException):
                on_ack()
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(pending)} sends were not acknowledged: {failures[0]!r}"
            )
