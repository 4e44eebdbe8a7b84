"""A second worker joins the group mid-stream: partitions move and nothing is lost.

Repeats are not yet bounded by one batch (issue 5): on the dev broker a join mid-stream repeats
what was acknowledged since the last interval commit (about --commit-interval-s of traffic)."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest

from models.demo_reviews import demo_splits
from tests.integration.conftest import WorkerFactory, result_counts
from worker.broker import create_topics
from worker.clients import produce_values

pytestmark = pytest.mark.integration
N, BATCH, RATE = 6000, 8, 300  # 20 s of steady traffic: the join lands in the middle of it


async def steady(broker: str, topic: str, texts: list[str]) -> None:
    """RATE reviews/s in 100 ms ticks."""
    per_tick = RATE // 10
    start = time.monotonic()
    for n, i in enumerate(range(0, len(texts), per_tick)):
        await asyncio.sleep(max(0.0, start + n * 0.1 - time.monotonic()))
        chunk = [(f"k{j}".encode(), orjson.dumps({"id": f"r{j}", "text": texts[j]}))
                 for j in range(i, min(i + per_tick, len(texts)))]  # fmt: skip
        await produce_values(broker, topic, chunk)


def test_a_worker_joining_mid_stream_loses_nothing(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=4))
    texts = [ex.text for ex in demo_splits().train[:N]]
    first = start_worker("--batch-size", str(BATCH))
    producer = threading.Thread(target=lambda: asyncio.run(steady(broker, topics["input"], texts)))
    producer.start()
    time.sleep(3)
    second = start_worker("--batch-size", str(BATCH))  # returns once it holds partitions
    assert producer.is_alive(), "the join must land mid-stream for this test to mean anything"
    producer.join()

    counts = result_counts(broker, topics["output"], N)
    assert set(counts) == {f"r{i}" for i in range(N)}, f"lost: {N - len(counts)}"
    assert first.poll() is None and second.poll() is None
