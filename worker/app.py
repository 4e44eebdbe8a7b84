"""The Faust app: consume raw bytes, micro-batch with ``take_events``, hand batches to the pipeline.

Traps handled here (DESIGN.md "Delivery semantics"):
- values are consumed as raw bytes and decoded in the pipeline, so bad input reaches the DLQ
  instead of being skipped by faust's deserializer;
- ``take_events`` acks the whole buffer when its body ends, even by an exception or a
  cancellation, so the body never lets an error escape: a batch is finished (published and
  acknowledged) before control returns, also when the agent is being cancelled, and a failure
  to publish ends the process before faust can commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
from faust.types import TP, EventT
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, generate_latest

from models.engine import Classifier
from schemas.errors import ConfigError
from schemas.messages import Headers
from worker.logs import logging_config
from worker.metrics import METRICS_CONTENT_TYPE, Metrics
from worker.pipeline import BatchProcessor, Record, Topics
from worker.security import broker_credentials
from worker.settings import Settings

log = logging.getLogger(__name__)

EXIT_PUBLISH_FAILED = 70


class FaustPublisher:
    """Sends through faust's own producer; ``send`` returns aiokafka's delivery future.

    The output and dead-letter topics are declared (created if missing, with the configured
    partitions) before the first send, so a first batch never races their creation.
    """

    def __init__(self, app: faust.App, sinks: list[faust.TopicT]) -> None:
        self.app = app
        self.sinks = sinks
        self.declared = False

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> Awaitable[Any]:
        if not self.declared:
            for sink in self.sinks:
                await sink.maybe_declare()
            self.declared = True
        return await self.app.producer.send(topic, key, value, None, None, headers)


def to_record(event: EventT) -> Record:
    msg = event.message
    headers = msg.headers
    return Record(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=msg.key,
        value=msg.value,
        headers=list(headers.items()) if isinstance(headers, Mapping) else list(headers or []),
        timestamp_ms=int(msg.timestamp * 1000),
    )


def create_app(settings: Settings, classifier: Classifier, registry: CollectorRegistry) -> faust.App:
    app = faust.App(
        settings.group_id,
        broker=[f"kafka://{b}" for b in settings.broker_list],
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        datadir=str(settings.home / "faust"),
        autodiscover=False,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        consumer_auto_offset_reset=settings.offset_reset,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        broker_commit_interval=settings.commit_interval_s,
        producer_acks=-1,
        broker_client_id=settings.client_id,
        broker_credentials=broker_credentials(settings),
    )
    metrics = Metrics.create(registry)
    info = classifier.info
    metrics.model_info.info(
        {
            "name": info.name,
            "version": info.version,
            "kind": info.kind,
            "device": info.device,
            "dtype": info.dtype,
        }
    )
    for label in info.labels:  # every label visible at 0 from the start
        metrics.results_by_label.labels(label=label)
    in_flight = InFlight(metrics)
    source = app.topic(settings.input_topic, key_type=bytes, value_type=bytes)
    sinks = [
        app.topic(t, key_type=bytes, value_type=bytes) for t in (settings.output_topic, settings.dlq_topic)
    ]
    # One model thread: the GPU runs one batch at a time anyway, and the event loop stays free.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    processor = BatchProcessor(
        classifier,
        FaustPublisher(app, sinks),
        Topics(output=settings.output_topic, dlq=settings.dlq_topic),
        metrics,
        executor,
        max_message_bytes=settings.max_message_bytes,
    )

    @app.agent(source)
    async def classify(stream: faust.StreamT) -> None:
        # take_events is on faust.Stream, the runtime type, but not on the StreamT protocol
        async for events in cast(faust.Stream, stream).take_events(
            settings.batch_size, within=settings.batch_wait_s
        ):
            records = [to_record(e) for e in events]
            with in_flight.track():
                await finish_batch(processor, records)
            record_lag(app, metrics, records)

    @app.page("/metrics")
    async def metrics_view(self: View, request: Request) -> Response:
        return self.bytes(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        return self.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(self: View, request: Request) -> Response:
        assigned = sorted(
            f"{tp.topic}[{tp.partition}]"
            for tp in app.consumer.assignment()
            if tp.topic == settings.input_topic
        )
        oldest = in_flight.oldest_age()
        stuck = oldest > settings.stuck_batch_s
        ready = bool(assigned) and classifier.health() and not stuck
        body = {"ready": ready, "assigned": assigned, "oldest_batch_s": round(oldest, 3), "stuck": stuck}
        return self.json(body, status=200 if ready else 503)

    return app


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


def record_lag(app: faust.App, metrics: Metrics, records: list[Record]) -> None:
    """Per partition of a finished batch: messages between its last offset and the partition's end."""
    last: dict[tuple[str, int], int] = {}
    for rec in records:
        key = (rec.topic, rec.partition)
        last[key] = max(last.get(key, -1), rec.offset)
    for (topic, partition), offset in last.items():
        try:
            highwater = app.consumer.highwater(TP(topic, partition))
        except Exception:  # not known yet (just assigned): try again after the next batch
            continue
        if highwater is not None:
            metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(
                max(0, highwater - offset - 1)
            )


async def finish_batch(processor: BatchProcessor, records: list[Record]) -> None:
    """Run the batch to completion even if this task is cancelled meanwhile (shutdown, rebalance).

    ``take_events`` acks the batch as soon as this returns or raises; finishing first is what
    makes a clean stop repeat nothing and lose nothing. A batch that cannot be published ends
    the process without a commit, so it is consumed again after restart.
    """
    task = asyncio.ensure_future(processor.process(records))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
        except BaseException:
            break
    exc = task.exception()
    if exc is not None:
        log.critical("batch of %d could not be completed, exiting without commit: %r", len(records), exc)
        logging.shutdown()
        os._exit(EXIT_PUBLISH_FAILED)
    if cancelled:
        raise asyncio.CancelledError


def require_reachable(brokers: list[str], timeout_s: float = 5.0) -> None:
    """Fail fast, with a plain message, when no bootstrap server accepts a connection."""
    for address in brokers:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise ConfigError(f"cannot reach any Kafka broker in {','.join(brokers)} (is it running? see --brokers)")


def run_worker(settings: Settings) -> None:
    """Load the model, then run the Faust worker until SIGTERM/SIGINT (blocks)."""
    from models.default import default_checkpoint
    from models.engine import load_classifier, resolve_device

    require_reachable(settings.broker_list)
    checkpoint = settings.checkpoint or default_checkpoint(settings.home)
    on_cuda = resolve_device(settings.device, settings.dtype)[0].type == "cuda"
    classifier = load_classifier(
        checkpoint,
        device=settings.device,
        dtype=settings.dtype,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.batch_size,
        compile=settings.compile == "on" or (settings.compile == "auto" and on_cuda),
    )
    info = classifier.info
    log.info(
        "model %s %s loaded from %s on %s (%s)", info.name, info.version, checkpoint, info.device, info.dtype
    )
    seconds = classifier.warm_up()
    log.info("model warmed up in %.1f s", seconds)
    (settings.home / "faust").mkdir(parents=True, exist_ok=True)
    app = create_app(settings, classifier, CollectorRegistry())
    faust.Worker(
        app,
        loglevel=settings.log_level.upper(),
        quiet=True,
        logging_config=logging_config(settings.log_level),
    ).execute_from_commandline()
