"""Consuming, in batches: aiokafka's ``getmany`` into the scheduler, offsets committed after acks.

Why not faust's stream: faust builds an ``Event`` per message and passes each through its
conductor and stream machinery, several times the per-message cost of aiokafka's own batches
(``bench/stream.py`` measures a plain faust agent beside this worker:
``bench/results/stream-cpu.json``; ``docs/architecture.md`` says more). So the worker stays a
faust app (its process lifecycle, signals, web server, timers) while Kafka is read and written
here, with aiokafka directly, in whole batches.

What happens to a record:

1. ``getmany`` returns what the fetcher has buffered, across the assigned partitions. Records
   gather until ``batch_size`` are there (closed by ``count``) or ``batch_wait_s`` has passed
   since the first (closed by ``wait``).
2. The batch goes to :meth:`worker.batching.scheduler.BatchScheduler.submit`, which returns once it is in
   flight; with every slot busy the loop stops calling ``getmany``, the fetcher's bounded
   buffer fills, and fetching stops (backpressure; lag grows, memory does not).
3. When a micro-batch's results and dead letters are acknowledged by the broker, its records'
   offsets are marked finished (:class:`worker.kafka.offsets.OffsetBook`, a partition's at a
   time) and a commit follows promptly (at most one commit in flight, ``commit_interval_s``
   apart), so a crash repeats the batches in flight and little more.
4. On revocation (rebalance) and on stop, taking stops, everything admitted is finished,
   published and committed, and records gathered but not yet admitted are dropped: they were
   never committed, so their next owner reads them again. Nothing is lost, and a clean
   hand-over repeats nothing. A stop waits at most ``STOP_DRAIN_S`` for batches that cannot
   finish (the broker is away, the model hangs): they are abandoned uncommitted, so the next
   owner repeats them, and the process still exits cleanly.

The records go to the scheduler as aiokafka made them (``ConsumerRecord`` satisfies the
pipeline's :class:`worker.batching.pipeline.Record`): no copy and no callback per message.

A broker that goes away is not a crash: fetch and commit errors are logged and retried with
backoff, :meth:`KafkaSource.probe` tells readiness whether the cluster answers, and the
publishing side retries on its own (``worker/batching/pipeline.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from itertools import groupby
from operator import attrgetter
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, ConsumerStoppedError, KafkaError

from worker.batching.pipeline import Record
from worker.batching.scheduler import BatchScheduler
from worker.health import Backoff, Health
from worker.kafka.offsets import OffsetBook
from worker.settings import Settings

log = logging.getLogger(__name__)

IDLE_POLL_MS = 1000  # how long getmany waits when nothing is gathered (a stop cancels it at once)
STOP_DRAIN_S = 25.0  # a stop waits this long for in-flight batches (Kubernetes gives 60 s in ops/k8s)
STOP_STEP_S = 5.0  # and this long each for the final commit and leaving the group
PROBE_INTERVAL_S = 2.0  # one Metadata request per interval
PROBE_TIMEOUT_S = 5.0  # a metadata request unanswered this long: the broker counts as unreachable


_PARTITION = attrgetter("topic", "partition")


def by_partition(records: Iterable[Record]) -> Iterable[tuple[TopicPartition, list[int]]]:
    """The offsets of ``records`` per partition, in the order given (one entry per run of
    consecutive records of a partition: ``getmany`` hands them over a partition at a time)."""
    for (topic, partition), run in groupby(records, _PARTITION):
        yield TopicPartition(topic, partition), [r.offset for r in run]


class KafkaSource(ConsumerRebalanceListener):
    """One group member reading ``settings.input_topic`` into ``scheduler``; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        scheduler: BatchScheduler,
        *,
        security: Mapping[str, Any],
        health: Health | None = None,
        on_crash: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.security = security
        self.health = health if health is not None else Health()
        self.on_crash = on_crash
        self.book: OffsetBook[TopicPartition] = OffsetBook()
        self.consumer: AIOKafkaConsumer | None = None
        self.gathered: list[ConsumerRecord[bytes, bytes]] = []
        self.admitting: asyncio.Future[None] | None = None
        self.finished = asyncio.Event()
        self.commit_lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []
        self.started = False
        self.stopping = False
        self.commit_backoff = Backoff(settings.retry_backoff_max_s)
        self.commit_wait_s = 0.0  # the backoff after a failed commit, else 0

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=s.broker_list,
            group_id=s.group_id,
            client_id=s.client_id,
            enable_auto_commit=False,
            auto_offset_reset=s.offset_reset,
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout_s / 3) * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
            max_poll_records=s.batch_size,
            # a fetch the broker holds longer than a batch may wait would delay light traffic
            fetch_max_wait_ms=max(1, min(500, int(s.batch_wait_s * 1000))),
            **self.security,
        )
        self.consumer.subscribe([s.input_topic], listener=self)
        await self.consumer.start()
        if self.stopping:  # a stop came while the consumer was starting: start nothing more
            return
        self.started = True
        self.tasks = [
            asyncio.ensure_future(self._guard(self._take())),
            asyncio.ensure_future(self._guard(self._commit_loop())),
            asyncio.ensure_future(self._guard(self._probe_loop())),
        ]

    async def stop(self) -> None:
        """Stop taking, finish what was admitted (``STOP_DRAIN_S`` at most), commit it, leave the group."""
        self.stopping = True
        taker, others = (self.tasks[0], self.tasks[1:]) if self.tasks else (None, [])
        if taker is not None:
            taker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await taker
        await self._finish_admitted(timeout_s=STOP_DRAIN_S)
        for task in others:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.consumer is not None:
            # with the broker away both would wait for it; a stop must not (nothing is lost:
            # what is not committed is repeated by the next owner)
            for step, what in ((self._commit(final=True), "final commit"), (self.consumer.stop(), "leaving")):
                try:
                    await asyncio.wait_for(step, timeout=STOP_STEP_S)
                except TimeoutError:
                    log.warning("%s gave up after %.0f s (the broker does not answer)", what, STOP_STEP_S)
        self.started = False

    # --- what the web views and the lag gauge read --------------------------------------------

    def assignment(self) -> set[TopicPartition]:
        if self.consumer is None or not self.started:
            return set()
        return set(self.consumer.assignment())

    def highwater(self, tp: TopicPartition) -> int | None:
        """The last fetch's high watermark; None for a partition not (or no longer) assigned."""
        if self.consumer is None or not self.started or tp not in self.consumer.assignment():
            return None  # aiokafka asserts on a partition that a rebalance just took away
        hw: int | None = self.consumer.highwater(tp)
        return hw

    async def _probe_loop(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def probe(self) -> None:
        """Ask the cluster for its metadata; record in ``health`` whether it answered in time."""
        if self.consumer is None or not self.started:
            return
        try:
            await asyncio.wait_for(self.consumer.topics(), timeout=PROBE_TIMEOUT_S)
        except (TimeoutError, KafkaError, OSError) as exc:
            if self.health.broker_reachable:
                log.warning("the Kafka cluster does not answer (%r); not ready until it does", exc)
            self.health.broker_lost(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            return
        if not self.health.broker_reachable:
            log.info("the Kafka cluster answers again")
        self.health.broker_seen()

    def done_up_to(self, tp: TopicPartition) -> int | None:
        return self.book.done_up_to(tp)

    async def end_offsets(self, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
        """The partitions' end offsets, asked of the broker ({} when it cannot say now)."""
        if self.consumer is None or not self.started or not tps:
            return {}
        try:
            ends: dict[TopicPartition, int] = await self.consumer.end_offsets(list(tps))
        except KafkaError as exc:
            log.debug("end offsets not available now: %r", exc)
            return {}
        return ends

    async def position(self, tp: TopicPartition) -> int | None:
        """The next offset ``getmany`` will return for ``tp`` (None when it cannot say now)."""
        if self.consumer is None or not self.started:
            return None
        try:
            offset: int = await asyncio.wait_for(self.consumer.position(tp), timeout=1.0)
        except (TimeoutError, KafkaError, AssertionError):  # AssertionError: no longer assigned
            return None
        return offset

    # --- rebalance listener (called by aiokafka's coordinator) --------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        started = time.monotonic()
        dropped = len(self.gathered)
        self.gathered = []  # never admitted: the next owner reads them from the committed offset
        await self._finish_admitted()
        await self._commit(final=True)
        self.book.forget(revoked)
        log.info(
            "partitions revoked: %s; in-flight work finished and committed in %.2f s, %d gathered records "
            "left for the next owner",
            sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked), time.monotonic() - started, dropped,
        )  # fmt: skip

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    # --- internals -----------------------------------------------------------------------------

    async def _guard(self, work: Awaitable[None]) -> None:
        """Run ``work``; a failure is reported once, and crashes the app (which then stops us)."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except ConsumerStoppedError:
            if self.stopping:  # stopped under it (SIGTERM during the group join): not a failure
                return
            log.critical("the Kafka consumer was closed under the worker, stopping")
            if self.on_crash is None:
                raise
            await self.on_crash(ConsumerStoppedError())
        except Exception as exc:
            log.critical("the Kafka consumer failed, stopping: %r", exc)
            if self.on_crash is None:
                raise
            await self.on_crash(exc)

    async def _take(self) -> None:
        assert self.consumer is not None
        s = self.settings
        first_at, backoff = 0.0, Backoff(s.retry_backoff_max_s)
        while not self.stopping:
            if self.gathered:
                left_ms = max(0, int((first_at + s.batch_wait_s - time.monotonic()) * 1000))
            else:
                left_ms = IDLE_POLL_MS
            try:
                got = await self.consumer.getmany(
                    timeout_ms=left_ms, max_records=s.batch_size - len(self.gathered)
                )
            except ConsumerStoppedError:
                raise
            except KafkaError as exc:  # the group coordinator away or moving: keep trying
                delay = backoff.next()
                log.warning("fetching failed (%r); trying again in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if got and not self.gathered:
                first_at = time.monotonic()
            for msgs in got.values():
                self.gathered.extend(msgs)
            if not self.gathered:
                continue
            if len(self.gathered) >= s.batch_size:
                await self._admit("count")
            elif time.monotonic() >= first_at + s.batch_wait_s:
                await self._admit("wait")

    async def _admit(self, closed_by: str) -> None:
        msgs, self.gathered = self.gathered, []
        for tp, offsets in by_partition(msgs):
            self.book.take_many(tp, offsets)
        admitting = self.admitting = asyncio.ensure_future(
            self.scheduler.submit(msgs, self._finished, closed_by)
        )
        try:
            await asyncio.shield(admitting)  # a stop lets the admission complete (see stop)
        finally:
            # a revocation may have finished this admission and cleared it meanwhile
            if self.admitting is admitting and admitting.done():
                self.admitting = None

    def _finished(self, records: Sequence[Record]) -> None:
        """A micro-batch's results and dead letters are acknowledged: its offsets may be committed."""
        for tp, offsets in by_partition(records):
            self.book.finish_many(tp, offsets)
        self.finished.set()

    async def _finish_admitted(self, timeout_s: float | None = None) -> None:
        """Wait for the admission in progress and every batch in flight (``timeout_s`` at most:
        what is still unfinished then is abandoned uncommitted, for the next owner to repeat)."""
        admitting = self.admitting
        try:
            async with asyncio.timeout(timeout_s):
                if admitting is not None:  # wait without cancelling it, nor raising what it raised
                    await asyncio.wait([admitting])
                await self.scheduler.drain()
        except TimeoutError:
            log.warning(
                "%d batches still unfinished after %.0f s (broker away or model stuck); leaving them "
                "uncommitted: the next owner repeats them", len(self.scheduler.tasks), timeout_s or 0,
            )  # fmt: skip
            if admitting is not None:
                admitting.cancel()
            await self.scheduler.abandon()
        if self.admitting is admitting:
            self.admitting = None

    async def _commit_loop(self) -> None:
        while True:
            await self.finished.wait()
            self.finished.clear()
            await self._commit()
            # after a failure, back off (the coordinator may be away); else the configured pace
            await asyncio.sleep(max(self.settings.commit_interval_s, self.commit_wait_s))

    async def _commit(self, *, final: bool = False) -> None:
        """Commit what finished in order. A failure is logged: its records are repeated, not lost."""
        assert self.consumer is not None
        async with self.commit_lock:
            assigned = self.consumer.assignment()
            offsets = {tp: o for tp, o in self.book.to_commit().items() if tp in assigned}
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except CommitFailedError as exc:  # the group moved on (rebalance): the next owner repeats these
                log.warning(
                    "offset commit refused by the group (%s); %d partitions affected", exc, len(offsets)
                )
                return
            except KafkaError as exc:
                if final:
                    log.error(
                        "final offset commit failed (%r): the next owner repeats up to %s", exc, offsets
                    )
                else:
                    self.commit_wait_s = self.commit_backoff.next()
                    log.warning("offset commit failed (%r); retrying in %.2f s", exc, self.commit_wait_s)
                    self.finished.set()
                return
            self.commit_wait_s = 0.0
            self.commit_backoff.reset()
            self.book.committed(offsets)
