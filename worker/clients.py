"""Small Kafka clients behind ``sentiment produce`` and ``sentiment tail`` (plain aiokafka)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from schemas.messages import now_ms

LineFormat = Literal["auto", "json", "text"]


def line_to_message(line: str, *, fmt: LineFormat, lineno: int) -> tuple[bytes | None, bytes]:
    """(key, value) for one input line.

    JSON lines are sent byte for byte (malformed ones too: that is how one tests the DLQ);
    plain text lines become ``{"id", "text", "ts"}`` with a fresh id. ``auto`` treats a line
    that starts with ``{`` as JSON.
    """
    stripped = line.rstrip("\r\n")
    if fmt == "json" or (fmt == "auto" and stripped.lstrip().startswith("{")):
        value = stripped.encode()
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None, value
        review_id = obj.get("id") if isinstance(obj, dict) else None
        return (review_id.encode() if isinstance(review_id, str) else None), value
    review_id = f"line-{lineno}-{uuid.uuid4().hex[:8]}"
    return review_id.encode(), orjson.dumps({"id": review_id, "text": stripped, "ts": now_ms()})


async def produce_values(
    brokers: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes]],
    *,
    security: Mapping[str, Any] | None = None,
) -> list[RecordMetadata]:
    """Send every (key, value) and wait for the broker's acknowledgements.

    ``security``: TLS/SASL keyword arguments (``worker.security.aiokafka_security``).
    """
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5, **(security or {}))
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


async def consume(
    brokers: str,
    topic: str,
    *,
    limit: int | None = None,
    timeout_s: float | None = None,
    from_beginning: bool = True,
    security: Mapping[str, Any] | None = None,
) -> AsyncIterator[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Yield (key, value, headers) from ``topic`` without joining a group (nothing committed).

    Stops after ``limit`` messages, or when ``timeout_s`` passes with no new message.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=brokers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **(security or {}),
    )
    await consumer.start()
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                if timeout_s is not None and time.monotonic() - last > timeout_s:
                    return
                continue
            last = time.monotonic()
            for records in batch.values():
                for r in records:
                    yield r.key, r.value, list(r.headers or [])
                    seen += 1
                    if limit is not None and seen >= limit:
                        return
    finally:
        await consumer.stop()
