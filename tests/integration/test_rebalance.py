"""A second worker joins the group mid-stream: partitions move, nothing is lost, repeats are bounded.

When its partitions are revoked, the first worker drops what it gathered but did not admit,
finishes and commits what it admitted, and only then lets the rebalance go on
(``KafkaSource.on_partitions_revoked`` in ``worker/kafka/consumer.py``). With faust's own consumer,
which forgets acknowledged offsets of revoked partitions before committing, 140-160 results were
done twice in runs here."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest

from models.demo.splits import demo_splits
from tests.integration.conftest import WorkerFactory, result_counts
from worker.kafka.admin import create_topics
from worker.kafka.clients import produce_values

pytestmark = pytest.mark.integration
BATCH, RATE = 8, 200


async def steady(broker: str, topic: str, texts: list[str], stop: threading.Event) -> int:
    """RATE reviews/s in 100 ms ticks until ``stop`` is set, then 2 s more; how many were sent."""
    per_tick, start, sent, stopped_at = RATE // 10, time.monotonic(), 0, None
    while sent < len(texts):
        if stop.is_set():
            stopped_at = stopped_at or time.monotonic()
            if time.monotonic() > stopped_at + 2:
                break
        await asyncio.sleep(max(0.0, start + sent / RATE - time.monotonic()))
        chunk = [(f"k{j}".encode(), orjson.dumps({"id": f"r{j}", "text": texts[j]}))
                 for j in range(sent, min(sent + per_tick, len(texts)))]  # fmt: skip
        await produce_values(broker, topic, chunk)
        sent += len(chunk)
    return sent


def test_a_worker_joining_mid_stream_loses_nothing_and_repeats_at_most_a_batch(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=4))
    splits = demo_splits()
    texts = [ex.text for ex in splits.train + splits.dev + splits.test]  # up to ~87 s of traffic
    first = start_worker("--batch-size", str(BATCH))
    stop, sent = threading.Event(), [0]
    producer = threading.Thread(
        target=lambda: sent.__setitem__(0, asyncio.run(steady(broker, topics["input"], texts, stop)))
    )
    producer.start()
    time.sleep(3)
    second = start_worker("--batch-size", str(BATCH))  # returns once it holds partitions
    stop.set()  # traffic goes on for 2 s more: the join lands in the middle of the stream
    producer.join()
    assert sent[0] < len(texts), "the traffic must outlast the join for this test to mean anything"

    n = sent[0]
    counts = result_counts(broker, topics["output"], n)
    assert set(counts) == {f"r{i}" for i in range(n)}, f"lost: {n - len(counts)}"
    repeated = sum(c - 1 for c in counts.values())
    assert repeated <= BATCH, f"{repeated} results repeated; a rebalance may repeat at most one batch"
    assert first.poll() is None and second.poll() is None
