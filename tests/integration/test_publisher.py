"""KafkaPublisher.send_many on the real broker: record batches per partition, Kafka's partitioning."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from worker.kafka.admin import create_topics
from worker.kafka.publisher import BATCH_BYTES, KafkaPublisher
from worker.settings import load_settings

PARTITIONS = 4


async def read_all(broker: str, topic: str, n: int) -> list[tuple[int, bytes | None, bytes, list[Any]]]:
    """(partition, key, value, headers) of the first ``n`` messages on ``topic``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, auto_offset_reset="earliest")
    await consumer.start()
    got: list[tuple[int, bytes | None, bytes, list[Any]]] = []
    try:
        async with asyncio.timeout(60):
            while len(got) < n:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    got += [(m.partition, m.key, m.value or b"", list(m.headers)) for m in msgs]
    finally:
        await consumer.stop()
    return got


async def publish(
    broker: str, topic: str, messages: list[tuple[bytes | None, bytes, list[Any]]]
) -> list[Any]:
    await create_topics(broker, [topic], partitions=PARTITIONS)
    publisher = KafkaPublisher(load_settings(brokers=broker), security={})
    await publisher.start()
    try:
        futures = await publisher.send_many(topic, messages)
        assert len(futures) == len(messages)
        await asyncio.gather(*futures)  # raises if any was not acknowledged
        return futures
    finally:
        await publisher.stop()


def test_keyed_messages_land_where_kafkas_default_partitioner_puts_them(
    broker: str, topics: dict[str, str]
) -> None:
    topic = topics["output"]
    messages = [(f"review-{i}".encode(), f"v{i}".encode(), [("trace", f"t{i}".encode())]) for i in range(300)]
    asyncio.run(publish(broker, topic, messages))
    got = asyncio.run(read_all(broker, topic, len(messages)))
    partition_of = DefaultPartitioner()  # aiokafka's own: murmur2 of the key, as Kafka's Java client
    everything = list(range(PARTITIONS))
    assert sorted(v for _, _, v, _ in got) == sorted(v for _, v, _ in messages), "each delivered once"
    for partition, key, value, headers in got:
        assert partition == partition_of(key, everything, everything), key
        i = int(value[1:])
        assert key == f"review-{i}".encode() and headers == [("trace", f"t{i}".encode())]
    assert len({p for p, *_ in got}) > 1, "300 keys spread over the partitions"


def test_keyless_messages_of_one_call_share_a_partition(broker: str, topics: dict[str, str]) -> None:
    topic = topics["output"]
    messages: list[tuple[bytes | None, bytes, list[Any]]] = [(None, f"v{i}".encode(), []) for i in range(50)]
    asyncio.run(publish(broker, topic, messages))
    got = asyncio.run(read_all(broker, topic, len(messages)))
    assert len(got) == 50 and len({p for p, *_ in got}) == 1


def test_a_call_larger_than_one_record_batch_is_split_and_fully_acknowledged(
    broker: str, topics: dict[str, str]
) -> None:
    topic = topics["output"]
    n, size = 3 * BATCH_BYTES // 1000, 1000  # about three record batches for one key
    messages = [(b"same-key", str(i).encode().ljust(size, b"."), []) for i in range(n)]
    futures = asyncio.run(publish(broker, topic, messages))
    assert len({id(f) for f in futures}) >= 3, "several record batches, each with its acknowledgement"
    got = asyncio.run(read_all(broker, topic, n))
    assert [int(v.rstrip(b".")) for _, _, v, _ in got] == list(range(n)), "all delivered, in order"


def test_records_stay_under_the_topics_max_message_bytes_read_from_the_broker(
    broker: str, topics: dict[str, str]
) -> None:
    """The limit is read with DescribeConfigs at start: every record batch sent stays under it, and
    a record alone over it fails at once as the broker would (the dev broker does not enforce it)."""
    from aiokafka.errors import MessageSizeTooLargeError
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    topic, limit = topics["output"], 2000

    async def scenario() -> tuple[list[Any], list[int], dict[str, int]]:
        await create_topics(
            broker, [topic], partitions=1, replication_factor=1, configs={"max.message.bytes": str(limit)}
        )
        settings = load_settings(brokers=broker, output_topic=topic, dlq_topic=topics["dlq"])
        publisher = KafkaPublisher(settings, security={})
        await publisher.start()
        try:
            sizes: list[int] = []
            real_send = publisher.producer.send_batch  # type: ignore[union-attr]

            async def send_batch(batch: Any, *args: Any, **kwargs: Any) -> Any:
                sizes.append(batch.size())
                return await real_send(batch, *args, **kwargs)

            publisher.producer.send_batch = send_batch  # type: ignore[union-attr,method-assign]
            messages = [(b"k", b"x" * 300, []) for _ in range(20)] + [(b"k", b"y" * 3000, [])]
            futures = await publisher.send_many(topic, messages)
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            return outcomes, sizes, dict(publisher.limits)
        finally:
            await publisher.stop()

    outcomes, sizes, limits = asyncio.run(scenario())
    assert limits[topic] == limit
    assert all(not isinstance(o, BaseException) for o in outcomes[:20])
    assert isinstance(outcomes[20], MessageSizeTooLargeError)
    assert len(sizes) >= 4 and max(sizes) <= limit, sizes  # 20 × ~330 bytes in batches under 2000
    one = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"k", b"x" * 300, [])
    assert one < limit
    got = asyncio.run(read_all(broker, topic, 20))
    assert len(got) == 20 and all(v == b"x" * 300 for _, _, v, _ in got)


def test_a_record_batch_that_cannot_be_queued_fails_alone(broker: str, topics: dict[str, str]) -> None:
    """The second partition's batch fails to queue: the first partition's batch stands (acknowledged
    and delivered once), only the second's messages get a failed future to be sent again."""
    from aiokafka.errors import KafkaTimeoutError

    topic = topics["output"]

    async def scenario() -> list[Any]:
        await create_topics(broker, [topic], partitions=PARTITIONS, replication_factor=1)
        publisher = KafkaPublisher(load_settings(brokers=broker), security={})
        await publisher.start()
        try:
            real, calls = publisher.producer.send_batch, [0]  # type: ignore[union-attr]

            async def second_fails(batch: Any, *args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                if calls[0] == 2:
                    raise KafkaTimeoutError("buffer full")
                return await real(batch, *args, **kwargs)

            publisher.producer.send_batch = second_fails  # type: ignore[union-attr,method-assign]
            keys = [f"k{i}".encode() for i in range(40)]  # spread over the 4 partitions
            futures = await publisher.send_many(topic, [(k, k, []) for k in keys])
            return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            await publisher.stop()

    outcomes = asyncio.run(scenario())
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert failed and all(isinstance(o, Exception) and "buffer full" in str(o) for o in failed)
    delivered = len(outcomes) - len(failed)
    assert 0 < delivered < len(outcomes)
    got = asyncio.run(read_all(broker, topic, delivered))
    assert len(got) == delivered and len({v for _, _, v, _ in got}) == delivered
