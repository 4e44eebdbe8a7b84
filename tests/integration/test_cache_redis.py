"""The cache on a real ``redis-server``: shared by two workers, entries expire, outages cost no review.

Debian's ``redis-server`` package provides the server (``./setup.sh --dev`` installs it). Each test
starts its own on a free port, without persistence (a killed server comes back empty, like a cache
that lost its memory).
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from models.engine.cache import CachedClassifier, RedisCache
from tests.unit.fakes import FakeClassifier
from tests.unit.test_cache import FakeEmbeddingEngine, recorder
from worker.ports import free_port

TIMEOUT_S = 0.25
COOLDOWN_S = 1.0
TEXTS = ["好评", "太差了", "还行吧，好", "物流很快", "好评"]


class RedisServer:
    """One ``redis-server`` on a fixed port: started, killed, frozen and started again."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server not found: ./setup.sh --dev installs Debian's redis-server package"
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.proc.poll() is None, (self.directory / "redis.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
                time.sleep(0.02)
        client.close()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def store(url: str, *, ttl_s: float = 60.0) -> RedisCache:
    return RedisCache.from_url(
        url, ttl_s=ttl_s, timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S, cooldown_s=COOLDOWN_S
    )


def test_two_workers_share_results_and_embeddings(server: RedisServer) -> None:
    one, two = FakeClassifier(), FakeClassifier()
    a, b = CachedClassifier(one, store(server.url)), CachedClassifier(two, store(server.url))
    assert a.classify(TEXTS) == one.classify(TEXTS)
    seen, observer = recorder()
    b.observer = observer
    assert b.classify([*TEXTS[:2], "新的"]) == one.classify([*TEXTS[:2], "新的"])
    assert two.calls == [["新的"]]  # what the other worker scored is a hit here
    assert seen == [("result", "hit", 2), ("result", "miss", 1)]
    # embeddings: a head on the same base, in another worker, finds them
    e1, e2 = FakeEmbeddingEngine(), FakeEmbeddingEngine()
    c1, c2 = CachedClassifier(e1, store(server.url)), CachedClassifier(e2, store(server.url))
    assert c1.classify(TEXTS) == e1.classify(TEXTS)
    assert c2.classify(TEXTS) == e2.classify(TEXTS)
    assert len(e2.calls) == 1  # only the reference call above
    for cached in (a, b, c1, c2):
        cached.close()


def test_entries_expire_after_the_ttl(server: RedisServer) -> None:
    inner = FakeClassifier()
    cached = CachedClassifier(inner, store(server.url, ttl_s=0.3))
    cached.classify(TEXTS)
    cached.classify(TEXTS)
    assert len(inner.calls) == 1
    time.sleep(0.4)
    cached.classify(TEXTS)
    assert len(inner.calls) == 2
    cached.close()


def test_a_killed_redis_costs_no_review_and_hits_resume_after_restart(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    inner = FakeClassifier()
    seen, observer = recorder()
    redis_store = store(server.url)
    cached = CachedClassifier(inner, redis_store, observer=observer)
    asked: list[int] = []
    mget = redis_store.client.mget

    def counted_mget(keys: list[bytes]) -> Any:
        asked.append(len(keys))
        return mget(keys)

    redis_store.client.mget = counted_mget  # type: ignore[method-assign,assignment]
    expected = inner.classify(TEXTS)
    caplog.set_level(logging.INFO, logger="models.engine.cache")
    assert cached.classify(TEXTS) == expected
    # killed between the lookup and the write-back of a batch: the batch still gets its results
    inner.gate = threading.Event()
    results: list[object] = []
    call = threading.Thread(target=lambda: results.append(cached.classify(["刚好在这时", "好"])))
    call.start()
    deadline = time.monotonic() + 5
    while len(inner.calls) < 3 and time.monotonic() < deadline:  # 2 + the reference call
        time.sleep(0.01)
    server.signal(signal.SIGKILL)
    inner.gate.set()
    call.join(timeout=5)
    inner.gate = None
    assert results == [inner.classify(["刚好在这时", "好"])]
    # during the outage: every text computed, counted as errors, and Redis not asked in the cool-down
    seen.clear()
    before = len(asked)
    for _ in range(5):
        assert cached.classify(TEXTS) == expected
    assert seen == [("result", "error", 4)] * 5
    assert len(asked) == before
    server.start()  # the same port, empty
    time.sleep(COOLDOWN_S)
    seen.clear()
    assert cached.classify(TEXTS) == expected
    assert cached.classify(TEXTS) == expected
    assert seen == [("result", "miss", 4), ("result", "hit", 4)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    assert len(warnings) == 1 and "SET" in warnings[0], warnings  # the write-back failed
    assert len(infos) == 1
    cached.close()


def test_a_hung_redis_costs_one_short_timeout_per_cool_down(server: RedisServer) -> None:
    inner = FakeClassifier()
    seen, observer = recorder()
    cached = CachedClassifier(inner, store(server.url), observer=observer)
    expected = cached.classify(TEXTS)
    server.signal(signal.SIGSTOP)  # accepts nothing, answers nothing: every request would time out
    try:
        started = time.monotonic()
        assert cached.classify(TEXTS) == expected
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(10):
            assert cached.classify(TEXTS) == expected
        rest = time.monotonic() - started
    finally:
        server.signal(signal.SIGCONT)
    assert TIMEOUT_S * 0.8 <= first < TIMEOUT_S + 0.5, first
    assert rest < TIMEOUT_S, rest  # not asked: no timeout per batch
    assert seen[1:] == [("result", "error", 4)] * 11
    time.sleep(COOLDOWN_S)
    seen.clear()
    calls = len(inner.calls)
    assert cached.classify(TEXTS) == expected
    assert seen == [("result", "hit", 4)] and len(inner.calls) == calls  # the entries survived
    cached.close()
