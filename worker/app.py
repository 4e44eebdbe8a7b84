"""The Faust app: consume raw bytes, take batches with ``take_events``, hand them to the scheduler.

Traps handled here (DESIGN.md "Delivery semantics"):
- values are consumed as raw bytes and decoded in the pipeline, so bad input reaches the DLQ
  instead of being skipped by faust's deserializer;
- ``take_events`` acks its buffer as soon as its body returns, but a batch is published later
  (several run at once, ``worker/scheduler.py``). So each event's message gets one more
  reference before the body returns, and the scheduler drops it once the result is
  acknowledged by the broker: only then can faust commit the offset. faust commits up to the
  first offset not yet acknowledged, and on shutdown or revocation it waits for all of them
  (``stream_wait_empty``), so in-flight batches are finished, published and committed first.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
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
from worker.pipeline import BatchProcessor, MicroBatch, Record, Topics
from worker.scheduler import BatchScheduler
from worker.security import broker_credentials
from worker.settings import Settings

log = logging.getLogger(__name__)

LAG_REFRESH_S = 5.0


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
    source = app.topic(settings.input_topic, key_type=bytes, value_type=bytes)
    sinks = [
        app.topic(t, key_type=bytes, value_type=bytes) for t in (settings.output_topic, settings.dlq_topic)
    ]
    # One model thread: the GPU runs one batch at a time anyway, and the event loop stays free.
    # Tokenising has its own thread, so the next batch is tokenised while the model runs.
    processor = BatchProcessor(
        classifier,
        FaustPublisher(app, sinks),
        Topics(output=settings.output_topic, dlq=settings.dlq_topic),
        metrics,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="model"),
        max_message_bytes=settings.max_message_bytes,
    )
    lag = LagTracker(app, metrics, settings.input_topic)
    scheduler = BatchScheduler(
        processor,
        classifier,
        metrics,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenise"),
        max_in_flight=settings.max_in_flight,
        max_batch_tokens=settings.max_batch_tokens,
        on_finished=lag.on_finished,
    )

    @app.agent(source)
    async def classify(stream: faust.StreamT) -> None:
        # take_events is on faust.Stream, the runtime type, but not on the StreamT protocol
        async for events in cast(faust.Stream, stream).take_events(
            settings.batch_size, within=settings.batch_wait_s
        ):
            for event in events:  # held until published; see the module docstring
                event.message.incref()
            closed_by = "count" if len(events) >= settings.batch_size else "wait"
            await scheduler.submit([to_record(e) for e in events], [e.ack for e in events], closed_by)

    finish_before_revoke(app)

    @app.timer(LAG_REFRESH_S)
    async def refresh_lag() -> None:
        lag.refresh()

    @app.page("/metrics")
    async def metrics_view(self: View, request: Request) -> Response:
        return self.bytes(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        return self.json({"status": "ok"})

    def readiness() -> dict[str, Any]:
        try:
            tps = app.consumer.assignment()
        except Exception:  # consumer not started yet
            tps = set()
        assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if tp.topic == settings.input_topic)
        oldest = scheduler.in_flight.oldest_age()
        stuck = oldest > settings.stuck_batch_s
        ready = bool(assigned) and classifier.health() and not stuck
        return {"ready": ready, "assigned": assigned, "oldest_batch_s": round(oldest, 3), "stuck": stuck}

    metrics.ready.set_function(lambda: float(readiness()["ready"]))
    for kind in ("allocated", "reserved"):
        metrics.device_memory.labels(kind=kind).set_function(partial(device_memory, info.device, kind))

    @app.page("/readyz")
    async def readyz(self: View, request: Request) -> Response:
        body = readiness()
        return self.json(body, status=200 if body["ready"] else 503)

    return app


def finish_before_revoke(app: faust.App) -> None:
    """On revocation, finish and commit what was taken before faust forgets what was acknowledged.

    faust's ``Consumer.on_partitions_revoked`` drops the acknowledged-but-uncommitted offsets of
    revoked partitions first, and only then waits for the streams and commits (faust-streaming
    0.15.3, ``transport/consumer.py``). Work finished since the last interval commit would be
    done again by the partition's next owner. Here the same steps faust takes (stop the flow,
    wait until every delivered message is acknowledged, committing as acks arrive) run before
    that, so a rebalance repeats at most what was taken after this point.
    """
    consumer = app.consumer
    # the ConsumerT protocol lacks this method; faust's Consumer, the runtime type, has it
    forget_and_revoke = cast(Any, consumer).on_partitions_revoked

    async def on_partitions_revoked(revoked: set[TP]) -> None:
        assignment = consumer.assignment()
        if assignment:
            consumer.stop_flow()
            app.flow_control.suspend()
            consumer.pause_partitions(assignment)
            app.flow_control.clear()
            await consumer.wait_empty()
        await forget_and_revoke(revoked)

    cast(Any, consumer).on_partitions_revoked = on_partitions_revoked


class LagTracker:
    """``sentiment_consumer_lag`` per input partition: the high watermark minus what is done.

    Updated when a batch finishes and every ``LAG_REFRESH_S``, so lag still shows while the
    model is stalled and nothing finishes.
    """

    def __init__(self, app: faust.App, metrics: Metrics, topic: str) -> None:
        self.app = app
        self.gauge = metrics.consumer_lag
        self.topic = topic
        self.done: dict[int, int] = {}  # partition -> next offset after the last finished record
        self.shown: set[int] = set()

    def on_finished(self, batch: MicroBatch) -> None:
        for rec in batch.records:
            self.done[rec.partition] = max(self.done.get(rec.partition, 0), rec.offset + 1)
        self.refresh({rec.partition for rec in batch.records})

    def refresh(self, partitions: set[int] | None = None) -> None:
        """Update ``partitions`` (default: all assigned; partitions no longer assigned are removed)."""
        try:
            assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == self.topic}
        except Exception:  # consumer not started yet
            return
        if partitions is None:
            for partition in set(self.shown) - assigned:
                self.gauge.remove(self.topic, str(partition))
                self.shown.discard(partition)
                self.done.pop(partition, None)
        for partition in assigned if partitions is None else partitions & assigned:
            done = self.done.get(partition, self._committed(partition))
            try:
                highwater = self.app.consumer.highwater(TP(self.topic, partition))
            except Exception:  # not known yet (just assigned): the next refresh tries again
                continue
            if highwater is not None and done is not None:
                self.gauge.labels(topic=self.topic, partition=str(partition)).set(max(0, highwater - done))
                self.shown.add(partition)

    def _committed(self, partition: int) -> int | None:
        """The group's committed offset as faust last saw it (None before the first commit)."""
        committed: Mapping[TP, int | None] = getattr(self.app.consumer, "_committed_offset", {})
        return committed.get(TP(self.topic, partition))


def device_memory(device: str, kind: str) -> float:
    """Bytes of accelerator memory ``kind`` (allocated or reserved) on ``device``; 0 on the CPU."""
    if not device.startswith("cuda"):
        return 0.0
    import torch

    stat = torch.cuda.memory_allocated if kind == "allocated" else torch.cuda.memory_reserved
    return float(stat(torch.device(device)))


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
    quiet_worker(app, settings.log_level, logging_config(settings.log_level)).execute_from_commandline()


def quiet_worker(app: faust.App, level: str, config: dict[str, Any] | None = None) -> faust.Worker:
    """A faust Worker without its terminal spinner.

    At a log level of warning or above, faust keeps the spinner and sets the root logger to
    DEBUG for it, so every library's debug record is built and dropped: aiokafka logs one per
    message sent (about 4% of the worker's time in bench/stream.py).
    """
    worker = faust.Worker(app, loglevel=level.upper(), quiet=True, logging_config=config)
    worker.spinner = None
    return worker
