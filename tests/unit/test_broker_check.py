"""The broker check before the model loads (``require_reachable``) leaves no thread of its own behind:
the ``--processes`` parent forks its children right after it, with a ``preexec_fn``, which is
unsafe beside another thread. Run on asyncio's own loop, whose host-name lookups run in Python
threads (uvloop's run in libuv's pool, outside Python)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from schemas.errors import ConfigError
from worker.kafka import admin
from worker.kafka.admin import require_reachable


@pytest.fixture(autouse=True)
def asyncio_loop() -> Iterator[None]:
    """asyncio's own event loop for the check, whatever policy an earlier test left installed."""
    before = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(None)
    yield
    asyncio.set_event_loop_policy(before)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens on it now: a connection is refused


def lookup_threads() -> set[threading.Thread]:
    """The threads a loop's executor may run lookups in: asyncio's own (``asyncio_N``) and the
    check's (``broker-check_N``); other tests' threads in this process come and go meanwhile."""
    prefixes = ("asyncio_", "broker-check_")
    return {t for t in threading.enumerate() if t.name.startswith(prefixes)}


def test_a_host_name_lookup_thread_has_ended_when_the_check_returns() -> None:
    before = lookup_threads()
    for _ in range(5):  # before the fix the lookup thread was alive every time (20 of 20 tried)
        with pytest.raises(ConfigError, match="cannot reach any Kafka broker"):
            require_reachable([f"localhost:{closed_port()}"], timeout_s=2)
        assert {t.name for t in lookup_threads() - before} == set()


def test_a_hung_lookup_is_left_behind_after_a_bounded_wait(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def hung(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    monkeypatch.setattr(admin, "RESOLVER_JOIN_S", 0.3)
    started = time.monotonic()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="worker.kafka.admin"),
            pytest.raises(ConfigError, match="no answer within"),
        ):
            require_reachable([f"localhost:{closed_port()}"], timeout_s=0.5)
        assert time.monotonic() - started < 5  # the check's 0.5 s and the join's 0.3 s, not the lookup's 30
        assert "a broker host name lookup is still running" in caplog.text
        assert any(t.name.startswith(admin.RESOLVER_THREADS + "_") for t in lookup_threads())
    finally:
        release.set()
        for thread in threading.enumerate():
            if thread.name.startswith(admin.RESOLVER_THREADS + "_"):
                thread.join(10)
