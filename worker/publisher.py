"""Publishing results and dead letters: one aiokafka producer, acknowledged by all in-sync replicas.

:meth:`KafkaPublisher.send` only appends to the producer's batch for the partition and returns
the delivery future; the pipeline sends a whole micro-batch and then awaits the futures together
(``worker/pipeline.py``), so a batch costs a few produce requests, not a round trip per message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas.messages import Headers
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

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> Awaitable[Any]:
        if self.producer is None:
            raise RuntimeError("the publisher is not started")
        return await self.producer.send(topic, value, key=key, headers=list(headers))
