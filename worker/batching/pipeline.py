"""What happens to one micro-batch: classify off the event loop, publish, account.

Kept free of faust so it can be unit-tested with fakes: it sees raw records (bytes in, bytes
out) and a :class:`Publisher` whose ``send_many`` returns, per message, a future of the
broker's acknowledgement.
The contract with the caller: when :meth:`BatchProcessor.process` returns, every record of the
batch has an acknowledged result or dead letter, so its offsets may be committed.

What can go wrong, and what happens:

- Bad input (undecodable, wrong schema, too large, too many headers) and texts the model fails
  on alone become dead letters.
- A result or dead letter larger than its topic takes: the result becomes a ``too_large`` dead
  letter; a dead letter is sent again without the original value and headers (its headers
  ``original.size`` and ``original.sha256`` still identify the value).
- The broker does not acknowledge (away, refusing writes, topic missing, a timeout): the
  unacknowledged messages are sent again with exponential backoff, for as long as it takes,
  while :class:`worker.health.Health` says "publishing: retrying" (not ready, and no new batch
  starts). A crash meanwhile repeats the batch; nothing is committed past it.
- What retrying cannot cure (the producer closed, a dead letter refused even bare, a model
  that fails on everything) is raised: :class:`PublishError` or :class:`ModelBroken`, and the
  caller must stop before committing.

Records are decoded (:meth:`BatchProcessor.decode`) and tokenised before they are cut into
micro-batches (``worker/batching/scheduler.py``), so a :class:`MicroBatch` carries its token ids and the
model never tokenises again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from aiokafka.errors import (
    BrokerNotAvailableError,
    ClusterAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnknownError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from models.engine.classifier import Classifier, Prediction, Tokenised
from schemas.errors import (
    InvalidMessage,
    ModelError,
    ModelUnavailable,
    ResultTooLargeError,
    SchemaError,
    SentimentError,
)
from schemas.messages import (
    HeaderList,
    Headers,
    ModelRef,
    ReviewFields,
    check_headers,
    dead_letter,
    now_ms,
    result_encoder,
    review_fields,
)
from worker.health import Backoff, Health
from worker.logs import where
from worker.metrics import Metrics, observe_many

log = logging.getLogger(__name__)
T = TypeVar("T")


TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# Not marked retriable by aiokafka, but cured by waiting (the cluster back) or by an operator (an
# ACL). UnknownError is the broker's UNKNOWN_SERVER_ERROR and any code aiokafka does not know: the
# long fault suite met it as a passing storage race of a restarted dev broker, so it is retried
# (a lasting one shows as "publishing: retrying" and its alert, not as a crash loop).
CURABLE = (
    KafkaTimeoutError,
    BrokerNotAvailableError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    UnknownError,
)


def retriable(exc: BaseException) -> bool:
    """Whether sending again can succeed: connection-level failures, errors Kafka marks
    retriable, and those an operator cures; not a closed producer, not a refused record."""
    if isinstance(exc, ProducerClosed):
        return False
    if isinstance(exc, (TimeoutError, OSError, *CURABLE)) or type(exc) is KafkaError:
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


def record_size(message: Outgoing) -> int:
    """Kafka's upper bound on the bytes of ``message`` alone in a record batch."""
    key, value, headers = message
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers))


class PublishError(SentimentError):
    """A result or dead letter cannot be delivered by retrying; offsets must not be committed."""


class ModelBroken(SentimentError):
    """Every text of a batch failed and the model's health probe fails too: the device is broken,
    so the texts are not to blame and must not become dead letters."""


class Record(Protocol):
    """One consumed message, as the pipeline reads it: aiokafka's ``ConsumerRecord`` as it comes
    (no copy per message), or a :class:`Message`."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def timestamp(self) -> int:
        """The broker's (or producer's) timestamp, epoch milliseconds."""
        ...


@dataclass(slots=True)
class Message:
    """A :class:`Record` made by hand (tests, tools); treated as read-only by the pipeline."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: int


Outgoing = tuple[bytes | None, bytes, HeaderList]  # key, value, headers


class Publisher(Protocol):
    async def send_many(self, topic: str, messages: Sequence[Outgoing]) -> list[Awaitable[Any]]:
        """Queue ``messages`` for ``topic``; one future per message (messages may share one)."""
        ...

    def limit(self, topic: str) -> int:
        """The largest record (batch) ``topic`` takes, in bytes, as far as the publisher knows."""
        ...


@dataclass(slots=True)
class Delivery:
    """One message to deliver, and what its acknowledgement means."""

    topic: str
    message: Outgoing
    on_ack: Callable[[], None]
    record: Record
    dead: InvalidMessage | None = None  # set for a dead letter: why
    alone: bool = False  # sent in a record batch of its own (to tell whose size was refused)
    bare: bool = False  # a dead letter sent without the original value and headers


@dataclass(frozen=True, slots=True)
class Limits:
    """Input and dead-letter bounds (the settings of the same names)."""

    max_message_bytes: int = 1_000_000
    max_headers: int = 64
    max_header_bytes: int = 16384
    dlq_max_value_bytes: int = 65536
    retry_backoff_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Topics:
    output: str
    dlq: str


_Results = tuple[
    list[Outgoing], Sequence[Record], list[int], list[int], list[bool], list[tuple[Record, InvalidMessage]]
]


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """Records cut for one model call, with what was decoded and tokenised for them.

    ``decoded[i]`` is the review of ``records[i]`` (the JSON object, checked:
    :func:`schemas.messages.review_fields`) or why it is dead-lettered; ``tokens`` holds
    the token ids of the valid reviews, in record order. ``closed_by`` is the limit that closed
    the batch: ``count``, ``tokens`` or ``wait``.
    """

    records: Sequence[Record]
    decoded: Sequence[ReviewFields | InvalidMessage]
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
        limits: Limits = Limits(),  # frozen: one shared default is safe
        health: Health | None = None,
        clock_ms: Callable[[], int] = now_ms,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.classifier = classifier
        self.publisher = publisher
        self.topics = topics
        self.metrics = metrics
        self.executor = executor
        self.limits = limits
        self.health = health if health is not None else Health()
        self.clock_ms = clock_ms
        self.sleep = sleep
        self.model_since: float | None = None  # when the model call now running began
        info = classifier.info
        self.model_ref = ModelRef(name=info.name, version=info.version)
        self.labels = info.labels
        self.encode = result_encoder(info.labels, self.model_ref)
        self.by_label = [metrics.results_by_label.labels(label=label) for label in info.labels]

    def decode(self, records: Sequence[Record]) -> list[ReviewFields | InvalidMessage]:
        """Each record's review, or the reason it will be dead-lettered (size is checked first)."""
        out: list[ReviewFields | InvalidMessage] = []
        append = out.append
        lim = self.limits
        max_bytes = lim.max_message_bytes
        for rec in records:
            try:
                if rec.headers:
                    check_headers(rec.headers, max_count=lim.max_headers, max_bytes=lim.max_header_bytes)
                append(review_fields(rec.value, max_bytes=max_bytes))
            except InvalidMessage as exc:
                append(exc)
        return out

    async def process(self, batch: MicroBatch) -> None:
        """Handle a batch completely; see the module docstring for the guarantee.

        The results go out in one call and, once all are acknowledged (the usual case), are
        accounted per batch; only those that fail become :class:`Delivery` items for the retrying
        path (:meth:`_deliver`), with the dead letters."""
        preds = await self._classify(batch.tokens)
        messages, sources, ts_ins, label_ids, truncated, dead = self._results(batch, preds, self.clock_ms())
        letters = [self._dead_letter(rec, error) for rec, error in dead]
        if letters:
            results, first = await asyncio.gather(self._send_results(messages), self._send(letters))
        else:
            results, first = await self._send_results(messages), []
        if results is None:  # every result acknowledged
            self._account(ts_ins, label_ids, truncated)
            await self._deliver(letters, first)
            return
        acked = [i for i, outcome in enumerate(results) if outcome is None]
        self._account(
            [ts_ins[i] for i in acked], [label_ids[i] for i in acked], [truncated[i] for i in acked]
        )
        failed = [i for i, outcome in enumerate(results) if outcome is not None]
        again = [
            Delivery(self.topics.output, messages[i], self._on_result(ts_ins[i], label_ids[i], truncated[i]),
                     sources[i])
            for i in failed
        ]  # fmt: skip
        await self._deliver(again + letters, [results[i] for i in failed] + first)

    def _results(
        self, batch: MicroBatch, preds: Sequence[Prediction | InvalidMessage], ts_out: int
    ) -> _Results:
        """The batch's results (messages, their records, ``ts_in``, label ids, truncated flags) and
        its dead letters to be (record, why). The usual batch (every review valid and predicted,
        every result encodable) is encoded in one pass per field; any other goes review by review."""
        records, decoded, encode = batch.records, batch.decoded, self.encode
        n = len(records)
        if len(preds) == n == len(batch.tokens.ids) and not any(isinstance(p, InvalidMessage) for p in preds):
            ok = cast(Sequence[Prediction], preds)
            reviews = cast(Sequence[ReviewFields], decoded)  # as many predictions as records: all valid
            ts_ins = [
                ts if (ts := review.get("ts")) is not None else rec.timestamp
                for review, rec in zip(reviews, records, strict=True)
            ]
            try:
                values = [
                    encode(review, p.probabilities, p.truncated, ts_in, ts_out)
                    for review, p, ts_in in zip(reviews, ok, ts_ins, strict=True)
                ]
            except (TypeError, ValueError):  # one is not encodable: find it below
                pass
            else:
                messages = [(rec.key, v, list(rec.headers)) for rec, v in zip(records, values, strict=True)]
                return messages, records, ts_ins, [p.label_id for p in ok], [p.truncated for p in ok], []
        predictions = iter(preds)
        messages, sources, ts_ins, label_ids, truncated, dead = [], [], [], [], [], []
        for rec, review in zip(records, decoded, strict=True):
            if isinstance(review, InvalidMessage):
                dead.append((rec, review))
                continue
            pred = next(predictions, None)
            if pred is None:
                raise ValueError("fewer predictions than valid reviews")
            if isinstance(pred, InvalidMessage):
                dead.append((rec, pred))
                continue
            ts = review.get("ts")
            ts_in = ts if ts is not None else rec.timestamp
            try:
                value = encode(review, pred.probabilities, pred.truncated, ts_in, ts_out)
            except (TypeError, ValueError) as exc:  # e.g. meta nested deeper than orjson writes (255)
                dead.append((rec, SchemaError(f"the result cannot be encoded: {exc}")))
                continue
            messages.append((rec.key, value, list(rec.headers)))  # aiokafka's builder takes a list
            sources.append(rec)
            ts_ins.append(ts_in)
            label_ids.append(pred.label_id)
            truncated.append(pred.truncated)
        if next(predictions, None) is not None:
            raise ValueError("more predictions than valid reviews")
        return messages, sources, ts_ins, label_ids, truncated, dead

    async def _send_results(self, messages: list[Outgoing]) -> list[BaseException | None] | None:
        """Send a batch's results in one call; None when every one is acknowledged, else per
        message None (acknowledged) or why not."""
        if not messages:
            return None
        try:
            futures = await self.publisher.send_many(self.topics.output, messages)
        except Exception as exc:  # e.g. no metadata for the topic: nothing of it was queued
            return [exc] * len(messages)
        unique = list(dict.fromkeys(futures))  # one future per record batch (partition), not per message
        done = await asyncio.gather(*unique, return_exceptions=True)
        if not any(isinstance(d, BaseException) for d in done):
            return None
        outcome = {
            f: (d if isinstance(d, BaseException) else None) for f, d in zip(unique, done, strict=True)
        }
        return [outcome[f] for f in futures]

    def _account(self, ts_ins: Sequence[int], label_ids: Sequence[int], truncated: Sequence[bool]) -> None:
        """The metrics of acknowledged results, once per batch."""
        if not ts_ins:
            return
        m = self.metrics
        m.messages_out.inc(len(ts_ins))
        for label_id, n in Counter(label_ids).items():
            self.by_label[label_id].inc(n)
        n_truncated = sum(truncated)
        if n_truncated:
            m.truncated.inc(n_truncated)
        now = self.clock_ms()
        observe_many(m.end_to_end_latency, [max(0, now - t) / 1000 for t in ts_ins])

    async def _classify(self, tok: Tokenised) -> list[Prediction | InvalidMessage]:
        """Run the model in its thread; a failing batch is retried text by text to isolate it.

        A model that cannot answer for now (:class:`ModelUnavailable`: its embedding server is
        away) is waited for: the batch is tried again with backoff, /readyz says not ready, and
        nothing is dead-lettered for it; only the batch's in-flight slot is held meanwhile."""
        if not tok.ids:
            return []
        backoff = Backoff(self.limits.retry_backoff_max_s)
        while True:
            try:
                preds = await self._classify_isolating(tok)
            except ModelUnavailable as exc:
                if self.health.model_unavailable is None:
                    log.warning("the model cannot answer (%s); waiting for it, not ready meanwhile", exc)
                self.health.model_waiting(f"{type(exc).__name__}: {exc}")
                await self.sleep(backoff.next())
                continue
            if self.health.model_unavailable is not None:
                log.info("the model answers again")
                self.health.model_answered()
            return preds

    async def _classify_isolating(self, tok: Tokenised) -> list[Prediction | InvalidMessage]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        began: list[float] = []

        def run() -> list[Prediction]:
            began.append(time.perf_counter())
            self.metrics.queue_wait.observe(began[0] - started)  # waited for the model thread
            return self._timed(self.classifier.classify_tokenised, tok)

        try:
            preds: list[Prediction | InvalidMessage] = list(await loop.run_in_executor(self.executor, run))
        except Exception as exc:
            if isinstance(exc, ModelUnavailable) and not await self._probe(loop):
                raise  # the server is away, not this batch's fault: wait for it
            log.warning("model failed on a batch of %d (%r); retrying one by one", len(tok.ids), exc)
            preds = [await self._classify_one(loop, tok.take([i])) for i in range(len(tok.ids))]
            if all(isinstance(p, ModelError) for p in preds):
                await self._check_model(loop, exc)
        if began:
            self.metrics.model_batch_latency.observe(time.perf_counter() - began[0])
        self.metrics.batch_reviews.observe(len(tok.ids))
        self.metrics.batch_tokens.observe(sum(map(len, tok.ids)))
        return preds

    async def _classify_one(
        self, loop: asyncio.AbstractEventLoop, tok: Tokenised
    ) -> Prediction | InvalidMessage:
        try:
            [pred] = await loop.run_in_executor(
                self.executor, self._timed, self.classifier.classify_tokenised, tok
            )
            return pred
        except Exception as exc:
            # unavailable, yet the probe answers: the server fails on this text (a dead letter);
            # if the probe fails too, the server went away meanwhile: wait for it
            if isinstance(exc, ModelUnavailable) and not await self._probe(loop):
                raise
            return ModelError(f"model failed: {type(exc).__name__}: {exc}")

    async def _probe(self, loop: asyncio.AbstractEventLoop) -> bool:
        """The model's health probe, on the model thread; False when it fails or raises."""
        try:
            return bool(await loop.run_in_executor(self.executor, self._timed, self.classifier.health))
        except Exception:
            return False

    async def probe_idle(self) -> None:
        """Readiness for a model behind a server (``idle_probe_s``): between batches, probe it and
        say whether it answers. Skipped while a model call runs (its outcome says it already)."""
        if self.model_since is not None:
            return
        if await self._probe(asyncio.get_running_loop()):
            if self.health.model_unavailable is not None:
                log.info("the model answers its health probe again")
                self.health.model_answered()
        elif self.health.model_unavailable is None:
            log.warning("the model's health probe fails (its server is away?); not ready until it answers")
            self.health.model_waiting("health probe failed")

    def _timed(self, call: Callable[..., T], *args: Any) -> T:
        """A model call (or the health probe: a broken device may hang there too), on the model
        thread, marked so /healthz can tell a hung one."""
        self.model_since = time.monotonic()
        try:
            return call(*args)
        finally:
            self.model_since = None

    def model_busy_s(self) -> float:
        """How long the model call now running has taken (0 when none runs)."""
        since = self.model_since
        return time.monotonic() - since if since is not None else 0.0

    async def _check_model(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
        """Every text failed alone too: blame the texts only if the model's health probe passes."""
        if not await self._probe(loop):
            self.health.model_failed(f"{type(exc).__name__}: {exc}")
            raise ModelBroken(f"the model fails on every text and its health probe fails: {exc!r}")

    def _dead_letter(self, rec: Record, exc: InvalidMessage, *, bare: bool = False) -> Delivery:
        """The single place dead-letter decisions are made and logged."""
        if not bare:
            log.warning(
                "dead-lettering %s[%d]@%d: %s: %s", rec.topic, rec.partition, rec.offset, exc.reason, exc,
                extra=where(rec.topic, rec.partition, rec.offset),
            )  # fmt: skip

        def build(max_value_bytes: int) -> Outgoing:
            return dead_letter(
                exc, topic=rec.topic, partition=rec.partition, offset=rec.offset,
                key=None if bare else rec.key,
                value=rec.value, headers=[] if bare else rec.headers, max_value_bytes=max_value_bytes,
            )  # fmt: skip

        message = build(0 if bare else self.limits.dlq_max_value_bytes)
        limit = self.publisher.limit(self.topics.dlq)
        while not bare and message[1] and record_size(message) > limit:
            # keep the longest prefix the dead-letter topic takes (a header may grow a byte: loop)
            message = build(max(0, len(message[1]) - (record_size(message) - limit)))
        return Delivery(self.topics.dlq, message, self._on_dead(exc), rec, dead=exc, alone=bare, bare=bare)

    def _on_result(self, ts_in: int, label_id: int, truncated: bool) -> Callable[[], None]:
        """The accounting of one result acknowledged on the retrying path."""
        return partial(self._account, [ts_in], [label_id], [truncated])

    def _on_dead(self, exc: InvalidMessage) -> Callable[[], None]:
        return lambda: self.metrics.dead_letters.labels(reason=exc.reason).inc()

    async def _deliver(
        self, pending: list[Delivery], outcomes: Sequence[BaseException | None] | None = None
    ) -> None:
        """Send until every message is acknowledged; see the module docstring for what is retried.
        ``outcomes``: those of a first attempt already made (one per ``pending`` item)."""
        backoff, retrying = Backoff(self.limits.retry_backoff_max_s), False
        try:
            while pending:
                if outcomes is None:
                    outcomes = await self._send(pending)
                again: list[Delivery] = []
                error: BaseException | None = None
                for item, outcome in zip(pending, outcomes, strict=True):
                    if outcome is None:
                        item.on_ack()
                    elif isinstance(outcome, TOO_LARGE):
                        again.append(self._smaller(item, outcome))
                    elif retriable(outcome):
                        again.append(item)
                        error = outcome
                    elif (
                        isinstance(outcome, KafkaError)
                        and not item.alone
                        and not isinstance(outcome, ProducerClosed)
                    ):  # the broker refused a record batch: find the record it refuses
                        item.alone = True
                        again.append(item)
                    else:
                        raise PublishError(
                            f"{item.topic} refuses a record of {item.record.topic}[{item.record.partition}]"
                            f"@{item.record.offset} and retrying cannot cure it: {outcome!r}"
                        ) from outcome
                pending, outcomes = again, None
                if error is not None:
                    if not retrying:
                        retrying = True
                        self.health.publish_retrying(f"{type(error).__name__}: {error}")
                    delay = backoff.next()
                    log.warning(
                        "%d of a batch's messages not acknowledged (%r); retrying in %.2f s",
                        len(again), error, delay,
                    )  # fmt: skip
                    self.metrics.publish_retries.labels(error=type(error).__name__).inc()
                    await self.sleep(delay)
        finally:
            if retrying:
                self.health.publish_recovered()

    async def _send(self, pending: Sequence[Delivery]) -> list[BaseException | None]:
        """Hand ``pending`` to the publisher; per message, None (acknowledged) or why not."""
        outcomes: list[BaseException | None] = [None] * len(pending)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, item in enumerate(pending):  # a message sent alone goes in a call of its own
            groups.setdefault((item.topic, i if item.alone else -1), []).append(i)
        waits: list[tuple[list[int], Awaitable[Any]]] = []
        for (topic, _), indices in groups.items():
            try:
                futures = await self.publisher.send_many(topic, [pending[i].message for i in indices])
            except Exception as exc:  # e.g. no metadata for the topic: nothing of it was queued
                for i in indices:
                    outcomes[i] = exc
                continue
            waits += [([i], f) for i, f in zip(indices, futures, strict=True)]
        results = await asyncio.gather(*(f for _, f in waits), return_exceptions=True)
        for (indices, _), result in zip(waits, results, strict=True):
            for i in indices:
                outcomes[i] = result if isinstance(result, BaseException) else None
        return outcomes

    def _smaller(self, item: Delivery, exc: BaseException) -> Delivery:
        """What to send instead of a message its topic refused for its size."""
        if not item.alone:  # it may be its record batch that was too large: try it on its own
            item.alone = True
            return item
        size = record_size(item.message)
        if item.dead is None:
            error = ResultTooLargeError(f"a result of {size} bytes is too large for {item.topic}: {exc}")
            return self._dead_letter(item.record, error)
        if not item.bare:
            log.warning(
                "dead letter of %d bytes refused by %s (%r); sending it without the original value",
                size, item.topic, exc,
            )  # fmt: skip
            return self._dead_letter(item.record, item.dead, bare=True)
        raise PublishError(f"{item.topic} refuses even a dead letter without its value: {exc!r}") from exc
