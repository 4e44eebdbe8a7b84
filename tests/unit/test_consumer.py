"""KafkaSource's pieces that need no broker (the rest runs against the real one in tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from worker.batching.scheduler import BatchScheduler
from worker.kafka.consumer import KafkaSource, by_partition
from worker.settings import load_settings


def source(on_crash: Any = None) -> KafkaSource:
    return KafkaSource(load_settings(), cast(BatchScheduler, None), security={}, on_crash=on_crash)


def test_a_consumer_failure_is_reported_once_to_the_app() -> None:
    crashes: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)

    async def failing() -> None:
        raise RuntimeError("fetch refused")

    asyncio.run(source(crash)._guard(failing()))
    assert [str(e) for e in crashes] == ["fetch refused"]


def test_without_a_crash_handler_the_failure_propagates() -> None:
    async def failing() -> None:
        raise RuntimeError("fetch refused")

    with pytest.raises(RuntimeError, match="fetch refused"):
        asyncio.run(source()._guard(failing()))


def consumed(partition: int, offset: int, value: bytes, headers: tuple = ()) -> ConsumerRecord:  # type: ignore[type-arg]
    return ConsumerRecord(
        topic="reviews", partition=partition, offset=offset, timestamp=1_700_000_000_123, timestamp_type=0,
        key=b"k", value=value, checksum=None, serialized_key_size=1, serialized_value_size=len(value),
        headers=headers,
    )  # fmt: skip


def test_a_consumed_message_goes_through_the_pipeline_as_aiokafka_made_it() -> None:
    """No copy per message: the pipeline reads ConsumerRecord's fields (headers a tuple, the
    broker timestamp as ``timestamp``) and publishes the result with the input's headers."""
    import orjson
    from prometheus_client import CollectorRegistry

    from tests.unit.fakes import FakePublisher, handle, make

    pub = FakePublisher()
    proc, _ = make(pub, CollectorRegistry())
    msgs = [
        consumed(3, 41, orjson.dumps({"id": "a", "text": "好"}), (("trace", b"t1"),)),
        consumed(3, 42, b"{broken", (("trace", b"t2"),)),
    ]
    run = handle(proc, msgs)
    assert sorted(run.acked) == [41, 42] and not run.fatal
    [(_, key, value, headers)] = [s for s in pub.sent if s[0] == "out"]
    assert key == b"k" and tuple(headers) == (("trace", b"t1"),)
    assert orjson.loads(value)["ts_in"] == 1_700_000_000_123  # no ts: the broker timestamp
    [(_, _, _, dead)] = [s for s in pub.sent if s[0] == "dlq"]
    assert dict(dead)["trace"] == b"t2" and dict(dead)["source.partition"] == b"3"


def test_offsets_are_grouped_by_partition_in_the_order_taken() -> None:
    from aiokafka import TopicPartition

    msgs = [consumed(p, o, b"{}") for p, o in ((0, 5), (0, 6), (1, 2), (1, 3), (0, 7))]
    assert list(by_partition(msgs)) == [
        (TopicPartition("reviews", 0), [5, 6]),
        (TopicPartition("reviews", 1), [2, 3]),
        (TopicPartition("reviews", 0), [7]),
    ]


class FakeConsumer:
    """What KafkaSource asks of aiokafka's consumer during a revocation: assignment and commit."""

    def __init__(self, assigned: set[Any]) -> None:
        self.assigned = assigned
        self.commits: list[dict[Any, int]] = []

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    async def commit(self, offsets: dict[Any, int]) -> None:
        self.commits.append(dict(offsets))

    def highwater(self, tp: Any) -> int:
        assert tp in self.assigned, "aiokafka asserts the partition is assigned"
        return 10


class GatedScheduler:
    """``submit`` returns once ``gate`` opens (all slots busy: the model is the bottleneck)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.acks: list[Any] = []

    async def submit(self, records: Any, ack: Any, closed_by: str) -> None:
        await self.gate.wait()
        self.acks.append((ack, records))

    async def drain(self) -> None:
        for ack, records in self.acks:
            ack(records)
        self.acks = []


def test_a_revocation_while_a_batch_waits_for_a_slot_finishes_it_and_does_not_crash() -> None:
    """The race of a scale-up under load: ``on_partitions_revoked`` finishes and clears the
    admission that ``_admit`` is still awaiting; ``_admit`` must return normally afterwards."""
    from aiokafka import TopicPartition

    tp = TopicPartition("reviews", 0)

    async def scenario() -> tuple[BaseException | None, list[dict[Any, int]]]:
        scheduler = GatedScheduler()
        src = KafkaSource(load_settings(), cast(BatchScheduler, scheduler), security={})
        src.consumer = cast(Any, FakeConsumer({tp}))
        src.gathered = [
            ConsumerRecord("reviews", 0, off, 0, 0, b"k", b"{}", None, 1, 2, ())  # type: ignore[arg-type]
            for off in (5, 6)
        ]
        taking = asyncio.ensure_future(src._admit("count"))
        await asyncio.sleep(0.01)  # _admit waits for a slot
        revoking = asyncio.ensure_future(src.on_partitions_revoked({tp}))
        await asyncio.sleep(0.01)
        scheduler.gate.set()  # a slot frees: the admission completes under the revocation
        await revoking
        error = None
        try:
            await taking
        except BaseException as exc:
            error = exc
        return error, src.consumer.commits  # type: ignore[union-attr]

    error, commits = asyncio.run(scenario())
    assert error is None, f"_admit failed after the revocation: {error!r}"
    assert commits == [{tp: 7}]  # both records finished and committed before the hand-over


def test_a_stop_while_the_consumer_starts_starts_no_taking() -> None:
    """SIGTERM during the group join: stop() runs while start() awaits the consumer; start()
    must then leave the stopped consumer alone (getmany on it raised ConsumerStoppedError)."""
    from aiokafka.errors import ConsumerStoppedError

    crashes: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashes.append(exc)

    async def stopped() -> None:
        raise ConsumerStoppedError()

    src = source(crash)
    src.stopping = True
    asyncio.run(src._guard(stopped()))
    assert crashes == []  # stopping: a closed consumer is the expected end, not a crash
    src.stopping = False
    asyncio.run(src._guard(stopped()))
    assert len(crashes) == 1  # closed under a running worker: that is a crash


def test_highwater_of_a_partition_no_longer_assigned_is_unknown_not_an_error() -> None:
    from aiokafka import TopicPartition

    src = source()
    src.consumer = cast(Any, FakeConsumer({TopicPartition("reviews", 0)}))
    src.started = True
    assert src.highwater(TopicPartition("reviews", 0)) == 10
    assert src.highwater(TopicPartition("reviews", 1)) is None


def test_a_stop_abandons_batches_that_cannot_finish_after_the_drain_timeout() -> None:
    """The broker away during a rolling deploy: in-flight batches retry forever; a stop must
    give up on them (uncommitted, so repeated by the next owner) instead of hanging."""
    from aiokafka.errors import KafkaTimeoutError
    from prometheus_client import CollectorRegistry

    from tests.unit.fakes import FakePublisher, Run, make, record

    async def scenario() -> tuple[float, list[int], int]:
        pub = FakePublisher(failures={"out": [KafkaTimeoutError()] * 10_000})
        proc, _ = make(pub, CollectorRegistry())
        run = Run(proc)
        src = KafkaSource(load_settings(), run.scheduler, security={})
        await run.submit([record(0, b'{"id": "a", "text": "\\u597d"}')])
        src.admitting = asyncio.ensure_future(run.submit([record(1, b'{"id": "b", "text": "x"}')]))
        await asyncio.sleep(0.05)
        started = asyncio.get_running_loop().time()
        await src._finish_admitted(timeout_s=0.3)
        return asyncio.get_running_loop().time() - started, run.acked, len(run.scheduler.tasks)

    took, acked, left = asyncio.run(scenario())
    assert 0.3 <= took < 2.0, f"the stop took {took:.2f} s"
    assert acked == [] and left == 0
