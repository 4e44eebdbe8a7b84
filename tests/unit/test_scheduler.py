"""BatchScheduler: token-budget cuts, backpressure, acks only after publishing, cancellation."""

from __future__ import annotations

import asyncio
import threading

import orjson
from prometheus_client import CollectorRegistry

from models.engine.cache import CachedClassifier, LRUCache
from tests.unit.fakes import FakePublisher, Run, make, record


def reviews(*texts: str, first: int = 0) -> list:
    return [record(first + i, orjson.dumps({"id": str(first + i), "text": t})) for i, t in enumerate(texts)]


def test_the_token_budget_cuts_a_batch_in_arrival_order_and_counts_why() -> None:
    registry = CollectorRegistry()
    proc, model = make(FakePublisher(), registry)
    run = Run(proc, max_batch_tokens=10)
    # 4 + 4 fits in 10, the third would not; the dead letter in between costs nothing
    batch = reviews("好好好好", "差差差差", "好好好好", "差差差差")
    batch.insert(2, record(9, b"{broken"))

    async def go() -> None:
        await run.submit(batch, closed_by="count")
        await run.scheduler.drain()

    asyncio.run(go())
    assert model.calls == [["好好好好", "差差差差"], ["好好好好", "差差差差"]]
    assert sorted(run.acked) == [0, 1, 2, 3, 9]
    count = registry.get_sample_value
    assert count("sentiment_batches_total", {"closed_by": "tokens"}) == 1
    assert count("sentiment_batches_total", {"closed_by": "count"}) == 1  # the rest keeps the reason
    assert count("sentiment_batches_total", {"closed_by": "wait"}) == 0
    assert count("sentiment_batch_size_tokens_sum") == 16
    assert count("sentiment_pending_reviews") == 0 and count("sentiment_in_flight_batches") == 0


def test_a_long_text_is_truncated_and_flagged_not_rejected() -> None:
    registry = CollectorRegistry()
    pub = FakePublisher()
    proc, model = make(pub, registry)  # the fake's max length is 16 characters
    run = Run(proc)
    asyncio.run(run.all(reviews("好" * 40, "差")))
    results = {orjson.loads(v)["id"]: orjson.loads(v) for t, _, v, _ in pub.sent if t == "out"}
    assert results["0"]["truncated"] is True and results["1"]["truncated"] is False
    assert model.calls == [["好" * 16, "差"]]
    assert registry.get_sample_value("sentiment_truncated_total") == 1


def test_a_slow_model_blocks_admission_instead_of_queueing() -> None:
    """With every slot busy, submit does not return: the consumer stops taking (backpressure)."""
    registry = CollectorRegistry()
    proc, model = make(FakePublisher(), registry)
    model.gate = threading.Event()
    run = Run(proc, max_in_flight=2)
    pending = lambda: registry.get_sample_value("sentiment_pending_reviews")  # noqa: E731

    async def go() -> None:
        await asyncio.wait_for(run.submit(reviews("好", "差")), 1)  # slot 1 (in the model, blocked)
        await asyncio.wait_for(run.submit(reviews("好", first=2)), 1)  # slot 2 (waiting for the model)
        third = asyncio.ensure_future(run.submit(reviews("差", first=3)))
        await asyncio.sleep(0.2)
        assert not third.done()  # no free slot: admission waits
        assert run.scheduler.slots.locked() and pending() == 4 and run.acked == []
        assert registry.get_sample_value("sentiment_in_flight_batches") == 2
        model.gate.set()
        await asyncio.wait_for(third, 5)
        await run.scheduler.drain()

    asyncio.run(go())
    assert sorted(run.acked) == [0, 1, 2, 3] and pending() == 0


def test_acks_wait_for_the_broker_and_a_cancelled_caller_does_not_drop_a_batch() -> None:
    class SlowAcks(FakePublisher):
        """Acknowledges only when the test says so."""

        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def send_many(self, topic, messages):  # type: ignore[no-untyped-def]
            self.sent += [(topic, *m) for m in messages]

            async def ack() -> int:
                await self.release.wait()
                return len(self.sent)

            return [asyncio.ensure_future(ack()) for _ in messages]

    async def go() -> tuple[Run, SlowAcks]:
        pub = SlowAcks()
        proc, _ = make(pub, CollectorRegistry())
        run = Run(proc)
        caller = asyncio.ensure_future(run.submit(reviews("好", "差")))
        await asyncio.sleep(0)
        caller.cancel()  # e.g. the agent stopped while the batch was being admitted
        await asyncio.sleep(0.2)
        assert len(pub.sent) == 2 and run.acked == []  # published, not yet acknowledged: no acks
        pub.release.set()
        await run.scheduler.drain()
        assert caller.cancelled()
        return run, pub

    run, _ = asyncio.run(go())
    assert sorted(run.acked) == [0, 1] and not run.fatal


def test_a_text_the_tokenizer_fails_on_is_dead_lettered_alone() -> None:
    pub = FakePublisher()
    proc, _ = make(pub, CollectorRegistry())
    run = Run(proc)
    batch = reviews("好", "untokenisable 好", "差")

    async def go() -> None:
        await run.submit(batch)
        await run.scheduler.drain()

    asyncio.run(go())
    assert sorted(run.acked) == [0, 1, 2]
    assert sorted(orjson.loads(v)["id"] for t, _, v, _ in pub.sent if t == "out") == ["0", "2"]
    [(_, _, _, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    assert dict(headers)["error.reason"] == b"model_error" and dict(headers)["source.offset"] == b"1"


def test_texts_tried_alone_after_a_tokenizer_failure_keep_their_cache_hits() -> None:
    """The one-by-one retry joins what the cached classifier tokenised: a hit stays a hit (its ids
    are empty; answered from the store, not by the model), a miss goes to the model."""
    pub = FakePublisher()
    proc, model = make(pub, CollectorRegistry())
    proc.classifier = CachedClassifier(model, LRUCache(max_entries=100, ttl_s=60))
    run = Run(proc)

    async def go() -> None:
        await run.all(reviews("好", "差"))
        model.calls.clear()
        await run.all(reviews("好", "untokenisable 好", "差", "新的好", first=2))

    asyncio.run(go())
    assert sorted(run.acked) == list(range(6))
    results = {orjson.loads(v)["id"]: orjson.loads(v)["label"] for t, _, v, _ in pub.sent if t == "out"}
    assert results == {"0": "positive", "1": "negative", "2": "positive", "4": "negative", "5": "positive"}
    assert model.calls == [["新的好"]]  # the hits were not computed again
    [(_, _, _, headers)] = [s for s in pub.sent if s[0] == "dlq"]
    assert dict(headers)["source.offset"] == b"3"
