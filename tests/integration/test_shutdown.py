"""SIGTERM in the middle of a stream: the worker finishes its batch in hand, commits and exits 0;
a worker started afterwards in the same group continues, and no input is lost or repeated.
The first runs on uvloop (the default), the second on asyncio's loop (``--event-loop asyncio``)."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import orjson
import pytest

from models.demo.splits import demo_splits
from tests.integration.conftest import WorkerFactory, result_counts, result_ids
from worker.kafka.admin import create_topics
from worker.kafka.clients import consume, produce_values

pytestmark = pytest.mark.integration
N = 2000


def test_sigterm_mid_stream_loses_nothing_and_repeats_nothing(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=2))
    texts = [ex.text for ex in demo_splits().train[:N]]
    messages = [(f"k{i}".encode(), orjson.dumps({"id": f"s{i}", "text": t})) for i, t in enumerate(texts)]
    asyncio.run(produce_values(broker, topics["input"], messages))
    first = start_worker("--batch-size", "4")

    async def first_results(n: int) -> int:
        return len([v async for _k, v, _h in consume(broker, topics["output"], limit=n, timeout_s=60)])

    assert asyncio.run(first_results(200)) == 200
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 0, first.log.read_text()[-3000:]  # type: ignore[attr-defined]
    done_before = Counter(asyncio.run(result_ids(broker, topics["output"])))
    assert 200 <= sum(done_before.values()) < N, (
        "the stop must land mid-stream for this test to mean anything"
    )

    # the second on asyncio's own loop: the stop and the hand-over hold across the two loops
    second = start_worker("--batch-size", "64", "--event-loop", "asyncio")
    counts = result_counts(broker, topics["output"], N)
    assert set(counts) == {f"s{i}" for i in range(N)}, f"lost: {N - len(counts)}"
    repeated = [i for i, c in counts.items() if c > 1]
    assert not repeated, f"{len(repeated)} repeated, e.g. {repeated[:5]}"
    assert "event loop: uvloop" in first.log.read_text()  # type: ignore[attr-defined]
    assert "event loop: asyncio" in second.log.read_text()  # type: ignore[attr-defined]


def test_a_crash_mid_stream_loses_nothing_and_repeats_at_most_the_batches_in_flight(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory
) -> None:
    """SIGKILL: nothing is drained. Offsets are committed as results are acknowledged, so the next
    worker repeats the batches that were in flight and those finished during the last commit."""
    batch, in_flight = 4, 2
    asyncio.run(create_topics(broker, [topics["input"], topics["output"], topics["dlq"]], partitions=2))
    texts = [ex.text for ex in demo_splits().train[:N]]
    messages = [(f"k{i}".encode(), orjson.dumps({"id": f"c{i}", "text": t})) for i, t in enumerate(texts)]
    asyncio.run(produce_values(broker, topics["input"], messages))
    first = start_worker("--batch-size", str(batch), "--max-in-flight", str(in_flight))

    async def first_results(n: int) -> int:
        return len([v async for _k, v, _h in consume(broker, topics["output"], limit=n, timeout_s=60)])

    assert asyncio.run(first_results(300)) == 300
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert sum(Counter(asyncio.run(result_ids(broker, topics["output"]))).values()) < N, "a crash mid-stream"

    start_worker("--batch-size", "64")
    counts = result_counts(broker, topics["output"], N)
    assert set(counts) == {f"c{i}" for i in range(N)}, f"lost: {N - len(counts)}"
    repeated = sum(c - 1 for c in counts.values())
    bound = (in_flight + 2) * batch  # in flight, plus what finished while the last commit was on its way
    assert repeated <= bound, f"{repeated} repeated after a crash; at most {bound} expected"
