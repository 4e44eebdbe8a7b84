"""The Faust app: the process around the worker (lifecycle, signals, web views, timers).

Kafka itself is read and written with aiokafka directly, in whole batches (``worker/kafka/consumer.py``
says why): faust's own consumer, producer and agents are switched off (:class:`NoKafka`), and a
:class:`KafkaService` started with the app owns the consumer and the producer. On SIGTERM faust
stops the app's services, which stops taking, finishes and publishes what is in flight,
commits, and leaves the group before the process exits.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import faust
from faust.app.base import BootStrategy
from faust.web import Request, Response, View
from mode import Service
from prometheus_client import CollectorRegistry, generate_latest

from models.engine.classifier import Classifier
from worker.batching.pipeline import BatchProcessor, Limits, Topics
from worker.batching.scheduler import BatchScheduler
from worker.event_loop import loop_name
from worker.health import Health
from worker.kafka.admin import create_topics, parse_topic_config, require_reachable
from worker.kafka.consumer import KafkaSource
from worker.kafka.lag import LagTracker
from worker.kafka.publisher import KafkaPublisher
from worker.kafka.security import aiokafka_security
from worker.logs import logging_config
from worker.metrics import METRICS_CONTENT_TYPE, Metrics
from worker.settings import Settings
from worker.start_deadline import start_deadline

log = logging.getLogger(__name__)

LAG_REFRESH_S = 1.0  # one ListOffsets request per refresh
STOP_PRODUCER_S = 5.0  # at most 25 + 5 + 5 + 5 s from SIGTERM to exit when the broker is away


class NoKafka(BootStrategy):
    """faust's services without its Kafka consumer and producer: :class:`KafkaService` does Kafka."""

    enable_kafka = False


class WorkerApp(faust.App):
    """The app, with :class:`KafkaService` started once the web server is up (so /readyz can
    answer "not ready" while partitions are being assigned) and stopped first."""

    BootStrategy = NoKafka
    kafka: Service | None = None

    async def on_started_init_extra_services(self) -> None:
        await super().on_started_init_extra_services()
        if self.kafka is not None:
            await self.add_runtime_dependency(self.kafka)


class KafkaService(Service):
    """Starts with the app, stops before it: topics declared, producer, then the consumer."""

    def __init__(
        self,
        settings: Settings,
        publisher: KafkaPublisher,
        source: KafkaSource,
        model_busy_s: Callable[[], float] = lambda: 0.0,
        app_crash: Callable[[], BaseException | None] = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.publisher = publisher
        self.source = source
        self.model_busy_s = model_busy_s
        self.app_crash = app_crash  # the app's crash reason: set when the stop comes from a crash

    async def on_start(self) -> None:
        s = self.settings
        await create_topics(
            ",".join(s.broker_list), [s.input_topic, s.output_topic, s.dlq_topic],
            partitions=s.partitions, replication_factor=s.replication_factor,
            configs=parse_topic_config(s.topic_config), security=aiokafka_security(s),
        )  # fmt: skip
        await self.publisher.start()
        await self.source.start()
        log.info("event loop: %s", loop_name(asyncio.get_running_loop()))
        log.info("serving /metrics, /healthz and /readyz on %s:%d", s.web_host, s.web_port)
        # What is alive now (libraries, model, app) lives as long as the process: frozen out of the
        # collector's passes, a full pass walks only what the stream made since (a cache's entries,
        # batches in flight), not the ~450,000 objects of torch and transformers (0.2-0.5 s a pass
        # on the 2-core CI machine). Collected first: no garbage of start-up is kept for good. The
        # thresholds stay Python's, so garbage cycles (an exception's traceback holding a 10 MiB
        # poison value) are freed as soon as before (tests/faults/test_poison.py bounds the RSS).
        gc.collect()
        gc.freeze()

    async def on_stop(self) -> None:
        await self.source.stop()  # finishes and publishes in-flight batches, commits
        try:  # everything was acknowledged or abandoned: only an unreachable broker can hold this
            await asyncio.wait_for(self.publisher.stop(), timeout=STOP_PRODUCER_S)
        except TimeoutError:
            log.warning(
                "the producer did not close within %.0f s (the broker does not answer)", STOP_PRODUCER_S
            )
        busy = self.model_busy_s()
        if busy > 0:
            # Python's exit joins the model thread, which would wait for the hung call forever:
            # everything else is stopped and committed, its batch was abandoned uncommitted
            log.warning("a model call is still running after %.0f s; exiting without waiting for it", busy)
            logging.shutdown()
            # a crash stays a failure (1, as a crash without a hung call ends): an exit 0 would
            # read as a clean stop, which --processes does not restart
            os._exit(0 if self.app_crash() is None else 1)


def create_app(settings: Settings, classifier: Classifier, registry: CollectorRegistry) -> faust.App:
    app = WorkerApp(
        settings.group_id,
        store="memory://",
        datadir=str(settings.home / "faust"),
        autodiscover=False,
        web_enabled=True,
        web_port=settings.web_port,
        web_bind=settings.web_host,
    )
    metrics = Metrics.create(registry)
    engine = classifier
    if hasattr(engine, "observer"):  # a model behind an embeddings server: its requests

        def observe_request(seconds: float, outcome: str) -> None:
            metrics.embedding_request_seconds.observe(seconds)
            metrics.embedding_requests.labels(outcome=outcome).inc()

        engine.observer = observe_request
    classifier = with_cache(classifier, settings, metrics)
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
    security = aiokafka_security(settings)
    health = Health()
    publisher = KafkaPublisher(settings, security=security)
    # One model thread: the GPU runs one batch at a time anyway, and the event loop stays free.
    # Tokenising has its own thread, so the next batch is tokenised while the model runs.
    processor = BatchProcessor(
        classifier,
        publisher,
        Topics(output=settings.output_topic, dlq=settings.dlq_topic),
        metrics,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="model"),
        limits=Limits(
            max_message_bytes=settings.max_message_bytes,
            max_headers=settings.max_headers,
            max_header_bytes=settings.max_header_bytes,
            dlq_max_value_bytes=settings.dlq_max_value_bytes,
            retry_backoff_max_s=settings.retry_backoff_max_s,
        ),
        health=health,
    )
    scheduler = BatchScheduler(
        processor,
        classifier,
        metrics,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenise"),
        max_in_flight=settings.max_in_flight,
        max_batch_tokens=settings.max_batch_tokens,
    )

    async def crash(exc: BaseException) -> None:
        await app.crash(exc)

    source = KafkaSource(settings, scheduler, security=security, health=health, on_crash=crash)
    lag = LagTracker(source, metrics, settings.input_topic)
    scheduler.on_finished = lag.on_finished
    app.kafka = KafkaService(
        settings, publisher, source, processor.model_busy_s, lambda: app.crash_reason,
        loop=app.loop, beacon=app.beacon,
    )  # fmt: skip

    idle_probe_s = getattr(engine, "idle_probe_s", None)
    if idle_probe_s:  # readiness follows the embeddings server even when no review arrives

        @app.timer(idle_probe_s)
        async def probe_model() -> None:
            if not scheduler.tasks:  # a batch in flight reports the server's state itself
                await processor.probe_idle()

    @app.timer(LAG_REFRESH_S)
    async def refresh_lag() -> None:
        try:  # an exception escaping a faust timer crashes the app: the gauge is not worth that
            await lag.refresh()
        except Exception as exc:
            log.warning("consumer lag not refreshed: %r", exc)

    metrics.broker_reachable.set_function(lambda: float(health.broker_reachable))

    @app.page("/metrics")
    async def metrics_view(self: View, request: Request) -> Response:
        return self.bytes(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(self: View, request: Request) -> Response:
        """Liveness: fails only when restarting the process is the cure, i.e. a model call hung
        past --stuck-batch-s (a broker outage is not: the worker resumes by itself)."""
        busy = processor.model_busy_s()
        if busy > settings.stuck_batch_s:
            return self.json({"status": "model call hung", "model_busy_s": round(busy, 1)}, status=503)
        return self.json({"status": "ok"})

    def readiness() -> dict[str, Any]:
        tps = source.assignment()
        assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in tps if tp.topic == settings.input_topic)
        oldest = scheduler.in_flight.oldest_age()
        stuck = oldest > settings.stuck_batch_s
        ready = bool(assigned) and health.ok and not stuck
        return {
            "ready": ready, "assigned": assigned, "oldest_batch_s": round(oldest, 3), "stuck": stuck,
            **health.report(),
        }  # fmt: skip

    metrics.ready.set_function(lambda: float(readiness()["ready"]))
    for kind in ("allocated", "reserved"):
        metrics.device_memory.labels(kind=kind).set_function(partial(device_memory, info.device, kind))

    @app.page("/readyz")
    async def readyz(self: View, request: Request) -> Response:
        body = readiness()
        return self.json(body, status=200 if body["ready"] else 503)

    return app


def with_cache(classifier: Classifier, settings: Settings, metrics: Metrics) -> Classifier:
    """``classifier`` behind the cache ``--cache-url`` names (``off``: as it is)."""
    if settings.cache_url == "off":
        return classifier
    from models.engine.cache import CachedClassifier, open_cache, redact

    store = open_cache(settings.cache_url, max_entries=settings.cache_size, ttl_s=settings.cache_ttl_s)

    def observe(cache: str, outcome: str, count: int) -> None:
        metrics.cache_lookups.labels(cache=cache, outcome=outcome).inc(count)

    cached = CachedClassifier(classifier, store, observer=observe)
    log.info(
        "%s cache: %s (entries used for %.0f s)",
        cached.cache,
        redact(settings.cache_url),
        settings.cache_ttl_s,
    )
    return cached


def device_memory(device: str, kind: str) -> float:
    """Bytes of accelerator memory ``kind`` (allocated or reserved) on ``device``; 0 on the CPU."""
    if not device.startswith("cuda"):
        return 0.0
    import torch

    stat = torch.cuda.memory_allocated if kind == "allocated" else torch.cuda.memory_reserved
    return float(stat(torch.device(device)))


def run_worker(settings: Settings) -> None:
    """Load the model, then run the Faust worker until SIGTERM/SIGINT (blocks).

    faust installs its signal handlers only when it runs; until then (checking the broker,
    training the default checkpoint, loading and warming up the model: seconds to minutes)
    SIGTERM or SIGINT ends the process with exit 0 and one log line, not a kill by signal (which
    ``--processes`` would count as a crash) or a traceback.
    """
    from models.demo.default import default_checkpoint
    from models.engine.classifier import load_classifier, resolve_device
    from worker.event_loop import use_event_loop
    from worker.ports import free_port
    from worker.processes import StopRequested, require_free_ports, stop_on_signals

    parse_topic_config(settings.topic_config)  # a malformed one fails now, not after the model loads
    use_event_loop(settings.event_loop)  # before any loop is made (faust's included)
    if settings.web_port == 0:  # any free port: faust's web server takes only a real one
        settings = settings.model_copy(update={"web_port": free_port(settings.web_host)})
    require_free_ports(settings.web_host, [settings.web_port])  # likewise a web port in use
    try:
        with stop_on_signals(final=True):
            require_reachable(settings.broker_list, security=aiokafka_security(settings))
            checkpoint = settings.checkpoint or default_checkpoint(settings.home)
            log.info("loading model from %s", checkpoint)
            with start_deadline(settings.start_timeout_s, "loading and warming up the model"):
                on_cuda = resolve_device(settings.device, settings.dtype)[0].type == "cuda"
                classifier = load_classifier(
                    checkpoint,
                    device=settings.device,
                    dtype=settings.dtype,
                    max_batch_tokens=settings.max_batch_tokens,
                    max_batch_size=settings.batch_size,
                    compile=settings.compile == "on" or (settings.compile == "auto" and on_cuda),
                    **settings.engine_options(),
                )
                info = classifier.info
                log.info("model %s %s loaded from %s on %s (%s)",
                         info.name, info.version, checkpoint, info.device, info.dtype)  # fmt: skip
                seconds = classifier.warm_up()
                log.info("model warmed up in %.1f s", seconds)
            (settings.home / "faust").mkdir(parents=True, exist_ok=True)
            app = create_app(settings, classifier, CollectorRegistry())
    except StopRequested as stop:
        log.info("stopped while loading the model (%s)", stop)
        return
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
