"""Publishing results and dead letters: one aiokafka producer, acknowledged by all in-sync replicas.

:meth:`KafkaPublisher.send_many` takes a micro-batch's messages for a topic, groups them by
partition and hands each group to the producer as one record batch (aiokafka's ``send_batch``):
one delivery future per partition instead of one per message, which is where aiokafka's
per-message ``send`` spends most of its time. The pipeline then awaits the futures together
(``worker/pipeline.py``), so a micro-batch costs a few produce requests, not a round trip per
message.

Partitions are chosen as Kafka's default partitioner does: murmur2 of the key (the same key
always lands on the same partition), and for messages without a key one partition per call
(Kafka's "sticky" choice), picked at random.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from worker.pipeline import Outgoing
from worker.settings import Settings

BATCH_BYTES = 256 * 1024  # per-partition produce batch: a 256-review micro-batch fits in a few
REQUEST_HEADROOM = 64 * 1024  # a dead letter carries the original value plus its headers


class KafkaPublisher:
    def __init__(self, settings: Settings, *, security: Mapping[str, Any]) -> None:
        self.settings = settings
        self.security = security
        self.producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        """Connect (aiokafka's producer must be created inside the running loop)."""
        settings = self.settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.broker_list,
            client_id=settings.client_id,
            acks="all",
            linger_ms=0,  # a batch's sends are appended without yielding, so they group anyway
            max_batch_size=BATCH_BYTES,
            max_request_size=max(1024 * 1024, settings.max_message_bytes + REQUEST_HEADROOM),
            **self.security,
        )
        await self.producer.start()

    async def stop(self) -> None:
        """Flush what is pending and close."""
        if self.producer is not None:
            await self.producer.stop()

    async def send_many(self, topic: str, messages: Sequence[Outgoing]) -> list[Awaitable[Any]]:
        if self.producer is None:
            raise RuntimeError("the publisher is not started")
        partitions = sorted(await self.producer.partitions_for(topic))
        sticky = random.choice(partitions)
        by_partition: dict[int, list[int]] = {}
        for i, (key, _, _) in enumerate(messages):
            p = sticky if key is None else partitions[(murmur2(key) & 0x7FFFFFFF) % len(partitions)]
            by_partition.setdefault(p, []).append(i)
        futures: list[Awaitable[Any]] = [None] * len(messages)  # type: ignore[list-item]  # all filled below
        for partition, indices in by_partition.items():
            batch, members = self.producer.create_batch(), list[int]()
            for i in indices:
                key, value, headers = messages[i]
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # full: send it and start the next one (a first message always fits)
                    sent = await self.producer.send_batch(batch, topic, partition=partition)
                    for j in members:
                        futures[j] = sent
                    batch, members = self.producer.create_batch(), []
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
                members.append(i)
            sent = await self.producer.send_batch(batch, topic, partition=partition)
            for j in members:
                futures[j] = sent
        return futures
