"""Publishing results and dead letters: one aiokafka producer, acknowledged by all in-sync replicas.

:meth:`KafkaPublisher.send_many` takes a micro-batch's messages for a topic, groups them by
partition and hands each group to the producer as one record batch (aiokafka's ``send_batch``):
one delivery future per partition instead of one per message, which is where aiokafka's
per-message ``send`` spends most of its time. The pipeline then awaits the futures together
(``worker/batching/pipeline.py``), so a micro-batch costs a few produce requests, not a round trip per
message.

Partitions are chosen as Kafka's default partitioner does: murmur2 of the key (the same key
always lands on the same partition), and for messages without a key one partition per call
(Kafka's "sticky" choice), picked at random. :func:`murmur2_many` is aiokafka's hash (the Java
client's) of a whole micro-batch's keys at once, a word at a time across the keys of one length.

Size limits: at start the publisher reads each topic's ``max.message.bytes`` (DescribeConfigs;
Kafka's default when it cannot). Record batches are kept under it, and a message that alone is
over it is not sent: its future fails with ``MessageSizeTooLargeError`` at once, as the broker
would answer, so the pipeline turns it into a dead letter instead of a request the broker
refuses (``worker/batching/pipeline.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from worker.batching.pipeline import Outgoing
from worker.settings import Settings

log = logging.getLogger(__name__)

BATCH_BYTES = 256 * 1024  # per-partition produce batch: a 256-review micro-batch fits in a few
REQUEST_HEADROOM = 64 * 1024  # a dead letter carries the original value plus its headers
KAFKA_MAX_MESSAGE_BYTES = 1_048_588  # the broker's default message.max.bytes
NO_COMPRESSION = 0  # the producer sends uncompressed batches (its default)


class KafkaPublisher:
    def __init__(self, settings: Settings, *, security: Mapping[str, Any]) -> None:
        self.settings = settings
        self.security = security
        self.producer: AIOKafkaProducer | None = None
        self.max_request_size = max(1024 * 1024, settings.max_message_bytes + REQUEST_HEADROOM)
        self.limits: dict[str, int] = {}

    async def start(self) -> None:
        """Connect (aiokafka's producer must be created inside the running loop), read topic limits."""
        settings = self.settings
        self.producer = AIOKafkaProducer(
            bootstrap_servers=settings.broker_list,
            client_id=settings.client_id,
            acks="all",
            linger_ms=0,  # a batch's sends are appended without yielding, so they group anyway
            max_batch_size=BATCH_BYTES,
            max_request_size=self.max_request_size,
            **self.security,
        )
        await self.producer.start()
        await self.read_limits([settings.output_topic, settings.dlq_topic])

    async def read_limits(self, topics: Iterable[str]) -> None:
        """Each topic's ``max.message.bytes`` (Kafka's default where the broker does not say)."""
        names = list(dict.fromkeys(topics))
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.settings.broker_list, request_timeout_ms=10_000, **self.security
        )
        try:
            await admin.start()
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
            )
            for response in responses:
                for error, _message, _type, name, entries, *_ in response.resources:
                    values = {e[0]: e[1] for e in entries}
                    if error == 0 and values.get("max.message.bytes"):
                        self.limits[name] = int(values["max.message.bytes"])
        except Exception as exc:  # an old broker, or no DescribeConfigs right: the default holds
            log.info("topic size limits not readable (%r); assuming %d bytes", exc, KAFKA_MAX_MESSAGE_BYTES)
        finally:
            await admin.close()
        log.info("record size limits: %s", {n: self.limit(n) for n in names})

    def limit(self, topic: str) -> int:
        """The largest record batch ``topic`` takes from us."""
        return min(self.limits.get(topic, KAFKA_MAX_MESSAGE_BYTES), self.max_request_size)

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
        n = len(partitions)
        keyed = [i for i, (key, _, _) in enumerate(messages) if key is not None]
        if len(keyed) < len(messages):
            by_partition[sticky] = [i for i, (key, _, _) in enumerate(messages) if key is None]
        hashes = murmur2_many([messages[i][0] for i in keyed])  # type: ignore[misc]  # keyed: not None
        for i, h in zip(keyed, hashes, strict=True):
            by_partition.setdefault(partitions[(h & 0x7FFFFFFF) % n], []).append(i)
        futures: list[Awaitable[Any]] = [None] * len(messages)  # type: ignore[list-item]  # all filled below
        limit = self.limit(topic)
        batch_bytes = min(BATCH_BYTES, limit)
        for partition, indices in by_partition.items():
            batch, members = BatchBuilder(batch_bytes, NO_COMPRESSION), list[int]()
            for i in indices:
                key, value, headers = messages[i]
                size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
                if size > limit:
                    futures[i] = refused(f"a record of {size} bytes, over {topic}'s limit of {limit}")
                    continue
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    # full: send it and start the next one (a first message always fits)
                    sent = await self._send_batch(batch, topic, partition)
                    for j in members:
                        futures[j] = sent
                    batch, members = BatchBuilder(batch_bytes, NO_COMPRESSION), []
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
                members.append(i)
            if members:
                sent = await self._send_batch(batch, topic, partition)
                for j in members:
                    futures[j] = sent
        return futures

    async def _send_batch(self, batch: BatchBuilder, topic: str, partition: int) -> Awaitable[Any]:
        """Queue one record batch; if queueing fails (no metadata, a full buffer, an earlier batch's
        error), a failed future for its messages alone: the batches already queued stand, so only
        these are sent again (``worker/batching/pipeline.py``)."""
        assert self.producer is not None
        try:
            sent: Awaitable[Any] = await self.producer.send_batch(batch, topic, partition=partition)
        except Exception as exc:
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return sent


_M = np.uint32(0x5BD1E995)
_SEED = 0x9747B28C


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """Kafka's murmur2 of each of ``keys`` (``aiokafka.partitioner.murmur2``, the Java client's
    ``Utils.murmur2``), computed for a whole batch at once: the keys of one length hash together,
    a 4-byte word at a time across all of them, in numpy's wrapping 32-bit arithmetic (a fifth to
    a tenth of the time of a Python loop per key, more for long keys such as UUIDs)."""
    out = np.empty(len(keys), dtype=np.uint32)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    with np.errstate(over="ignore"):
        for length, index in by_length.items():
            joined = b"".join([keys[i] for i in index])
            data = np.frombuffer(joined, dtype=np.uint8).reshape(len(index), length)
            h = np.full(len(index), _SEED ^ length, dtype=np.uint32)
            words = length >> 2
            if words:
                word = np.ascontiguousarray(data[:, : words * 4]).view("<u4")
                for j in range(words):
                    k = word[:, j] * _M
                    k ^= k >> np.uint32(24)
                    h = (h * _M) ^ (k * _M)
            extra, tail = length & 3, words * 4
            if extra == 3:
                h ^= data[:, tail + 2].astype(np.uint32) << np.uint32(16)
            if extra >= 2:
                h ^= data[:, tail + 1].astype(np.uint32) << np.uint32(8)
            if extra:
                h = (h ^ data[:, tail].astype(np.uint32)) * _M
            h ^= h >> np.uint32(13)
            h = h * _M
            h ^= h >> np.uint32(15)
            out[index] = h
    result: list[int] = out.tolist()
    return result


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of one key (see :func:`murmur2_many`)."""
    return murmur2_many([key])[0]


def refused(reason: str) -> asyncio.Future[Any]:
    """A delivery future that has failed as the broker fails a record over its size limit."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(MessageSizeTooLargeError(reason))
    return future
