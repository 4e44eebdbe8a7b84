"""Small Kafka clients behind ``sentiment produce`` and ``sentiment tail`` (plain aiokafka)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import RecordMetadata

from schemas.errors import SentimentError
from schemas.messages import now_ms

LineFormat = Literal["auto", "json", "text"]


class KafkaClientError(SentimentError):
    """``produce`` or ``tail`` could not reach the brokers, or a request failed: one line, no traceback."""


async def _start(client: AIOKafkaProducer | AIOKafkaConsumer, brokers: str) -> None:
    """Start ``client``; a failure becomes a :class:`KafkaClientError` naming the brokers, and the
    client is closed (no "Unclosed AIOKafkaProducer" warning after the error)."""
    quiet = logging.getLogger("aiokafka")  # its "Unable connect to …" line would repeat ours
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        await client.start()
    except KafkaError as exc:
        await client.stop()
        if isinstance(exc, KafkaConnectionError):
            raise KafkaClientError(
                f"cannot reach a Kafka broker at {brokers} (--brokers or SENTIMENT_BROKERS); "
                "is one running? (`sentiment broker` starts a dev broker)"
            ) from None
        raise KafkaClientError(f"{brokers}: {type(exc).__name__}: {exc}") from None
    finally:
        quiet.setLevel(level)


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

    ``security``: TLS/SASL keyword arguments (``worker.kafka.security.aiokafka_security``).
    """
    producer = AIOKafkaProducer(bootstrap_servers=brokers, acks="all", linger_ms=5, **(security or {}))
    await _start(producer, brokers)
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        return list(await asyncio.gather(*futures))
    except KafkaError as exc:
        raise KafkaClientError(
            f"sending to {topic} at {brokers} failed: {type(exc).__name__}: {exc}"
        ) from None
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
    await _start(consumer, brokers)
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            try:
                batch = await consumer.getmany(timeout_ms=200)
            except KafkaError as exc:
                raise KafkaClientError(
                    f"reading {topic} at {brokers} failed: {type(exc).__name__}: {exc}"
                ) from None
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


def dead_letter_view(value: bytes | None, headers: list[tuple[str, bytes]]) -> dict[str, Any] | None:
    """A dead letter as one JSON object for ``tail``: why (``error``), where it came from
    (``source``: topic, partition, offset), what is kept of it (``original``) and the value as
    text. ``None`` for a record that is not a dead letter (no ``error.reason`` header)."""
    found = {key: raw.decode("utf-8", "replace") for key, raw in headers if raw is not None}
    if "error.reason" not in found:
        return None

    def group(prefix: str) -> dict[str, str]:
        return {k.removeprefix(prefix): v for k, v in found.items() if k.startswith(prefix)}

    return {
        "dead_letter": True,
        "error": group("error."),
        "source": group("source."),
        "original": group("original."),
        "value": None if value is None else value.decode("utf-8", "replace"),
    }
