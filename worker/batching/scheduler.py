"""Admission and overlap: records taken from Kafka become micro-batches that run several at once.

The consuming side hands over what it took (closed by the count cap or the wait) with an
``ack``, called once per finished micro-batch with its records. Here the records are decoded,
tokenised once on a tokeniser thread, cut where the token budget says, and each piece waits for
one of ``max_in_flight`` slots before it starts. :meth:`BatchScheduler.submit` returns once
every piece holds a slot, so a slow model stops the consumer instead of growing a queue
(backpressure): at most ``max_in_flight`` batches are in flight plus the one being admitted.

A record is acknowledged (its offset becomes committable) only after its result or dead letter
is acknowledged by the broker; a micro-batch's records together, once all of them are. Batches
finish out of order; the consumer commits only up to the first offset not yet acknowledged, so
a crash repeats work and never skips it. While a batch retries its publishing, no new batch
starts (``Health.wait_publishing``). A batch that cannot be completed by retrying
(``PublishError``, ``ModelBroken``) ends the process without acknowledging anything
(``on_fatal``); one abandoned at a stop is simply not acknowledged.

Kept free of faust, like the pipeline, so it is unit-tested with fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, NoReturn

from models.engine.classifier import Classifier, Tokenised
from schemas.errors import InvalidMessage, ModelError
from schemas.messages import ReviewFields
from worker.batching.pipeline import BatchProcessor, MicroBatch, ModelBroken, Record
from worker.metrics import Metrics

log = logging.getLogger(__name__)

EXIT_PUBLISH_FAILED = 70  # EX_SOFTWARE: a result or dead letter that retrying cannot deliver
EXIT_MODEL_BROKEN = 71  # the model fails on everything, its health probe too (a broken device)

Ack = Callable[[Sequence[Record]], Any]  # called with a finished micro-batch's records


def exit_without_commit(batch: MicroBatch, exc: BaseException) -> NoReturn:
    """The default for a batch that cannot be completed: stop now, so nothing is committed."""
    log.critical("batch of %d could not be completed, exiting without commit: %r", len(batch.records), exc)
    logging.shutdown()
    os._exit(EXIT_MODEL_BROKEN if isinstance(exc, ModelBroken) else EXIT_PUBLISH_FAILED)


class InFlight:
    """Micro-batches being worked on: the in-flight gauge, and the age of the oldest for /readyz."""

    def __init__(self, metrics: Metrics) -> None:
        self.gauge = metrics.in_flight_batches
        self.started: dict[int, float] = {}
        self.counter = itertools.count()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        token = next(self.counter)
        self.started[token] = time.monotonic()
        self.gauge.inc()
        try:
            yield
        finally:
            del self.started[token]
            self.gauge.dec()

    def oldest_age(self) -> float:
        return time.monotonic() - min(self.started.values()) if self.started else 0.0


class BatchScheduler:
    def __init__(
        self,
        processor: BatchProcessor,
        classifier: Classifier,
        metrics: Metrics,
        tokeniser: Executor,
        *,
        max_in_flight: int,
        max_batch_tokens: int,
        on_finished: Callable[[MicroBatch], None] = lambda batch: None,
        on_fatal: Callable[[MicroBatch, BaseException], None] = exit_without_commit,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.processor = processor
        self.classifier = classifier
        self.metrics = metrics
        self.tokeniser = tokeniser
        self.max_batch_tokens = max_batch_tokens
        self.on_finished = on_finished
        self.on_fatal = on_fatal
        self.slots = asyncio.Semaphore(max_in_flight)
        self.in_flight = InFlight(metrics)
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False  # set by abandon(): nothing starts any more

    async def submit(self, records: Sequence[Record], ack: Ack, closed_by: str) -> None:
        """Admit ``records``; returns when all of them are in flight (backpressure). ``ack`` is
        called with each micro-batch's records once its results and dead letters are acknowledged.

        Once called, the records are seen through even if the caller is cancelled meanwhile
        (shutdown, rebalance): dropping them here would leave offsets that are never acknowledged.
        """
        if not records:
            return
        admit = asyncio.ensure_future(self._admit(records, ack, closed_by))
        cancelled = False
        while not admit.done():
            try:
                await asyncio.shield(admit)
            except asyncio.CancelledError:
                cancelled = True
        admit.result()
        if cancelled:
            raise asyncio.CancelledError

    async def drain(self) -> None:
        """Wait until every admitted batch has finished."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def abandon(self) -> None:
        """Cancel the batches in flight and start no more: none is acknowledged, so their records
        (and those of an admission still waiting) are repeated by the next owner."""
        self.closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _admit(self, records: Sequence[Record], ack: Ack, closed_by: str) -> None:
        self.metrics.messages_in.inc(len(records))
        self.metrics.pending_reviews.inc(len(records))
        decoded = self.processor.decode(records)
        tokens = await self._tokenise(decoded)
        # the token budget counts each valid review's tokens; dead letters cost nothing
        if len(tokens.ids) == len(decoded):  # all valid (the usual case): review i is text i
            lengths = list(map(len, tokens.ids))
            where: Sequence[int] = range(len(decoded) + 1)
        else:
            valid = [not isinstance(r, InvalidMessage) for r in decoded]
            where = list(itertools.accumulate(valid, initial=0))
            lengths = [len(tokens.ids[where[i]]) if v else 0 for i, v in enumerate(valid)]
        runs = cut_by_tokens(lengths, self.max_batch_tokens)
        for n, run in enumerate(runs):
            start, stop = where[run.start], where[run.stop]
            batch = MicroBatch(
                records=records[run.start : run.stop],
                decoded=decoded[run.start : run.stop],
                tokens=tokens.part(start, stop),
                closed_by="tokens" if n < len(runs) - 1 else closed_by,
            )
            self.metrics.batches.labels(closed_by=batch.closed_by).inc()
            await self.processor.health.wait_publishing()  # none starts while others retry
            await self.slots.acquire()
            if self.closed:
                self.slots.release()
                return
            task = asyncio.ensure_future(self._run(batch, ack))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _tokenise(self, decoded: list[ReviewFields | InvalidMessage]) -> Tokenised:
        """Tokenise the valid reviews off the event loop. If the tokenizer fails on the batch, each
        text is tried alone, and only those that fail alone become model errors (in ``decoded``)."""
        texts = [r["text"] for r in decoded if not isinstance(r, InvalidMessage)]
        if not texts:
            return Tokenised([], [])
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            tokens = await loop.run_in_executor(self.tokeniser, self.classifier.tokenise, texts)
        except Exception as exc:
            log.warning(
                "tokenizer failed on a batch of %d texts (%r); trying them one by one", len(texts), exc
            )
            parts: list[Tokenised] = []
            for i, r in enumerate(decoded):
                if isinstance(r, InvalidMessage):
                    continue
                try:
                    one = await loop.run_in_executor(self.tokeniser, self.classifier.tokenise, [r["text"]])
                except Exception as alone:
                    decoded[i] = ModelError(f"tokenizer failed: {type(alone).__name__}: {alone}")
                    continue
                parts.append(one)
            # joined as the classifier made them (a cached classifier's carry what its store held)
            return parts[0].join(parts[1:]) if parts else Tokenised([], [])
        self.metrics.tokenise_seconds.observe(time.perf_counter() - started)
        return tokens

    async def _run(self, batch: MicroBatch, ack: Ack) -> None:
        try:
            with self.in_flight.track():
                await self.processor.process(batch)
        except asyncio.CancelledError:  # abandoned at a stop: not done, so nothing is acked
            self.slots.release()
            self.metrics.pending_reviews.dec(len(batch.records))
            raise
        except BaseException as exc:
            self.slots.release()
            self.on_fatal(batch, exc)
            return
        self.slots.release()
        ack(batch.records)
        self.metrics.pending_reviews.dec(len(batch.records))
        self.on_finished(batch)


def cut_by_tokens(lengths: Sequence[int], budget: int) -> list[range]:
    """Consecutive runs of ``lengths`` (arrival order) whose sums stay within ``budget``.

    A run closes before the text that would take it over; a text over the budget on its own
    still gets a run. Zero lengths (messages with nothing to tokenise) cost nothing.
    """
    if budget < 1:
        raise ValueError("budget must be positive")
    n = len(lengths)
    ends = list(itertools.accumulate(lengths, initial=0))  # ends[i]: tokens before text i
    runs: list[range] = []
    start = 0
    while start < n:
        # the run takes every text whose end stays within budget of the run's start (bisect on
        # the running sums, not a loop per text), and always at least one
        stop = max(start + 1, bisect_right(ends, ends[start] + budget, start + 1) - 1)
        runs.append(range(start, min(stop, n)))
        start = stop
    return runs
