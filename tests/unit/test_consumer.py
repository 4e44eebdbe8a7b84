"""KafkaSource's pieces that need no broker (the rest runs against the real one in tests/integration)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from worker.consumer import KafkaSource, to_record
from worker.scheduler import BatchScheduler
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


def test_a_consumed_message_becomes_a_record_with_its_position_and_headers() -> None:
    msg = ConsumerRecord(
        topic="reviews", partition=3, offset=41, timestamp=1_700_000_000_123, timestamp_type=0,
        key=b"k", value=b"{}", checksum=None, serialized_key_size=1, serialized_value_size=2,
        headers=(("trace", b"t1"),),
    )  # fmt: skip
    rec = to_record(msg)
    assert (rec.topic, rec.partition, rec.offset, rec.key, rec.value) == ("reviews", 3, 41, b"k", b"{}")
    assert rec.headers == [("trace", b"t1")] and rec.timestamp_ms == 1_700_000_000_123
