"""The worker's Prometheus metrics as one typed bundle (faust ``sensors/prometheus.py`` style).

Durations are seconds with explicit buckets from 1 ms to 30 s; tests build the bundle on a
fresh ``CollectorRegistry`` each.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)

from schemas.errors import DEAD_LETTER_REASONS

# aiohttp (faust's web server) takes the charset apart from the content type; UTF-8 is its default.
METRICS_CONTENT_TYPE = "; ".join(p for p in CONTENT_TYPE_LATEST.split("; ") if not p.startswith("charset"))

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REVIEW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
CLOSED_BY = ("count", "tokens", "wait")


def observe_many(histogram: Histogram, values: Iterable[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, with one update per bucket: the hot path
    observes a whole batch's latencies at once. Falls back to one ``observe`` each where the
    histogram's internals are not the ones this was written against (prometheus_client 0.2x)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or histogram._labelnames:
        for v in values:
            histogram.observe(v)
        return
    values = list(values)
    if not values:
        return
    # observe() counts v in the first bucket whose upper bound is >= v (bisect_left), the +Inf
    # bucket included; a NaN is counted in none, as there
    for i, n in Tally(bisect_left(bounds, v) for v in values if v == v).items():
        buckets[i].inc(n)
    total.inc(sum(values))


@dataclass(frozen=True)
class Metrics:
    messages_in: Counter
    messages_out: Counter
    dead_letters: Counter
    end_to_end_latency: Histogram
    model_batch_latency: Histogram
    batch_reviews: Histogram
    batch_tokens: Histogram
    model_info: Info
    results_by_label: Counter
    queue_wait: Histogram
    in_flight_batches: Gauge
    consumer_lag: Gauge
    batches: Counter
    pending_reviews: Gauge
    truncated: Counter
    tokenise_seconds: Histogram
    ready: Gauge
    device_memory: Gauge
    publish_retries: Counter
    broker_reachable: Gauge
    embedding_request_seconds: Histogram
    embedding_requests: Counter
    cache_lookups: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry, prefix: str = "sentiment") -> Metrics:
        def name(n: str) -> str:
            return f"{prefix}_{n}"

        m = cls(
            messages_in=Counter(name("messages_in"), "Input messages taken from Kafka.", registry=registry),
            messages_out=Counter(
                name("messages_out"), "Results published (broker-acknowledged).", registry=registry
            ),
            dead_letters=Counter(
                name("dead_letters"),
                "Messages dead-lettered (broker-acknowledged), by reason.",
                ["reason"],
                registry=registry,
            ),
            end_to_end_latency=Histogram(
                name("end_to_end_latency_seconds"),
                "Producer timestamp (ts, else broker timestamp) to result acknowledged.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            model_batch_latency=Histogram(
                name("model_batch_seconds"),
                "Time the model spent on one micro-batch (on its thread; tokenising is apart).",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch_reviews=Histogram(
                name("batch_size_reviews"),
                "Reviews per micro-batch.",
                buckets=REVIEW_BUCKETS,
                registry=registry,
            ),
            batch_tokens=Histogram(
                name("batch_size_tokens"),
                "Real (unpadded) tokens per micro-batch.",
                buckets=TOKEN_BUCKETS,
                registry=registry,
            ),
            model_info=Info(name("model"), "The served model.", registry=registry),
            results_by_label=Counter(
                name("results"),
                "Results published (broker-acknowledged), by label.",
                ["label"],
                registry=registry,
            ),
            queue_wait=Histogram(
                name("queue_wait_seconds"),
                "Time a micro-batch waited for the model thread before the model started on it.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            in_flight_batches=Gauge(
                name("in_flight_batches"),
                "Micro-batches taken from Kafka and not yet finished.",
                registry=registry,
            ),
            consumer_lag=Gauge(
                name("consumer_lag"),
                "Messages behind the partition's end (high watermark) after the last finished batch.",
                ["topic", "partition"],
                registry=registry,
            ),
            batches=Counter(
                name("batches"),
                "Micro-batches formed, by the limit that closed them: count (--batch-size), tokens "
                "(--max-batch-tokens) or wait (--batch-wait-s).",
                ["closed_by"],
                registry=registry,
            ),
            pending_reviews=Gauge(
                name("pending_reviews"),
                "Reviews taken from Kafka and not yet published; bounded by (--max-in-flight + 1) "
                "x --batch-size, whatever the lag.",
                registry=registry,
            ),
            truncated=Counter(
                name("truncated"),
                "Results whose text was cut to the model's max length (flagged truncated).",
                registry=registry,
            ),
            tokenise_seconds=Histogram(
                name("tokenise_seconds"),
                "Time tokenising one batch taken from Kafka (on the tokeniser thread).",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            ready=Gauge(
                name("ready"),
                "1 while /readyz would answer 200 (model loaded, partitions assigned, no batch stuck).",
                registry=registry,
            ),
            device_memory=Gauge(
                name("device_memory_bytes"),
                "Accelerator memory held by the model process (allocated by tensors, reserved by the "
                "allocator); 0 on the CPU.",
                ["kind"],
                registry=registry,
            ),
            publish_retries=Counter(
                name("publish_retries"),
                "Times a batch's results or dead letters were sent again because the broker did not "
                "acknowledge them, by error.",
                ["error"],
                registry=registry,
            ),
            broker_reachable=Gauge(
                name("broker_reachable"),
                "1 while the Kafka cluster answers the worker's metadata probe (every 2 s), else 0.",
                registry=registry,
            ),
            embedding_request_seconds=Histogram(
                name("embedding_request_seconds"),
                "One HTTP request to the embeddings server (--embedding-url), every attempt.",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            embedding_requests=Counter(
                name("embedding_requests"),
                "Requests to the embeddings server, by outcome: the HTTP status (200, 429, 503, ...), "
                "'timeout' or 'connect' (refused or unreachable). Retries count each attempt.",
                ["outcome"],
                registry=registry,
            ),
            cache_lookups=Counter(
                name("cache_lookups"),
                "Distinct texts of each batch looked up in the cache (--cache-url), by cache (result, "
                "embedding) and outcome: hit, miss (computed), error (the cache failed: computed).",
                ["cache", "outcome"],
                registry=registry,
            ),
        )
        for reason in DEAD_LETTER_REASONS:  # every reason visible at 0 from the start
            m.dead_letters.labels(reason=reason)
        for closed_by in CLOSED_BY:
            m.batches.labels(closed_by=closed_by)
        # process_start_time_seconds (the SentimentWorkerRestarting alert counts its changes: a
        # crash loop), resident memory, CPU, open files: read from /proc at each scrape
        ProcessCollector(registry=registry)
        return m
