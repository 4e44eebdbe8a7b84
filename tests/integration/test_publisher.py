"""KafkaPublisher.send_many on the real broker: record batches per partition, Kafka's partitioning."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from worker.broker import create_topics
from worker.publisher import BATCH_BYTES, KafkaPublisher
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
